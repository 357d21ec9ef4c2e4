"""Held-out corpora: real text in several languages, assembled from what a Debian machine ships,
used only to measure the recipe (bench/recipe.py --data heldout-az ...), never to choose a default.

    .venv/bin/python bench/heldout.py            # writes bench/out/heldout/<lang>/text.txt, prints sizes

Each corpus is one language's translated strings from the gettext catalogs under
/usr/share/locale/<lang>/LC_MESSAGES/*.mo (GNU gettext's binary catalog format, read with Python's
gettext module), deduplicated and grouped into documents of about DOC_CHARS characters separated by
blank lines (the txt reader's document boundary, so data.val_fraction can hold documents out).
Azerbaijani ships few catalogs, so its corpus adds the Azerbaijani descriptions of
shared-mime-info's freedesktop.org.xml (`<comment xml:lang="az">`).

The bundled demo corpus (pipeline/tools/demo_corpus.py) is generated from templates, never read
from these files; `check_demo_overlap` counts held-out lines that occur verbatim in it (0 expected).
"""
from __future__ import annotations

import gettext
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "heldout"
LOCALE = Path("/usr/share/locale")
MIME_XML = Path("/usr/share/mime/packages/freedesktop.org.xml")
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
LANGUAGES = {"az": "Azerbaijani", "tr": "Turkish", "de": "German"}
DOC_CHARS = 500
MAX_BYTES = 2_000_000          # a cap per corpus: every run stays minutes long on 2 CPU cores


def catalog_strings(lang: str) -> list[str]:
    """The translated strings of every catalog of `lang`, catalogs and msgids in sorted order."""
    out = []
    for mo in sorted((LOCALE / lang / "LC_MESSAGES").glob("*.mo")):
        try:
            with open(mo, "rb") as fh:
                catalog = gettext.GNUTranslations(fh)._catalog
        except (OSError, UnicodeDecodeError, ValueError, IndexError):   # a few catalogs have odd headers
            continue
        out += [str(v) for k, v in sorted(catalog.items(), key=lambda kv: str(kv[0])) if k]  # k "": the header
    return out


def mime_comments(lang: str) -> list[str]:
    if not MIME_XML.is_file():
        return []
    return [el.text for el in ET.parse(MIME_XML).iter() if el.get(XML_LANG) == lang and el.text]


def documents(lang: str) -> list[str]:
    """Unique non-empty strings, in first-seen order, packed into documents of ~DOC_CHARS."""
    seen, docs, current = set(), [], []
    for text in catalog_strings(lang) + (mime_comments(lang) if lang == "az" else []):
        text = re.sub(r"\n\s*\n", "\n", text).strip()   # a blank line inside would split a document
        if not text or text in seen:
            continue
        seen.add(text)
        current.append(text)
        if sum(map(len, current)) >= DOC_CHARS:
            docs.append("\n".join(current))
            current = []
    return docs + (["\n".join(current)] if current else [])


def build(lang: str) -> Path:
    """bench/out/heldout/<lang>/text.txt (rebuilt only when missing): the same bytes on any run."""
    path = OUT / lang / "text.txt"
    if not path.is_file():
        data, size = [], 0
        for doc in documents(lang):
            raw = doc.encode("utf-8")
            if size + len(raw) > MAX_BYTES:
                break
            data.append(raw)
            size += len(raw) + 2
        if not data:
            raise SystemExit(f"no {LANGUAGES[lang]} text under {LOCALE / lang}: install its language packs")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\n\n".join(data) + b"\n")
    return path


def check_demo_overlap(paths: list[Path]) -> int:
    """Lines (over 20 characters) of the held-out text that occur verbatim in the demo corpus."""
    sys.path.insert(0, str(ROOT))
    from pipeline.tools import demo_corpus

    demo = {line.strip() for data in demo_corpus.generate().values()
            for line in data.decode("utf-8").splitlines()}
    return sum(1 for p in paths for line in p.read_text(encoding="utf-8").splitlines()
               if len(line.strip()) > 20 and line.strip() in demo)


def main() -> None:
    paths = [build(lang) for lang in LANGUAGES]
    for lang, path in zip(LANGUAGES, paths):
        text = path.read_text(encoding="utf-8")
        print(f"{lang} ({LANGUAGES[lang]}): {path.relative_to(ROOT)}, {len(text.encode()):,} bytes, "
              f"{text.count(chr(10) + chr(10)) + 1:,} documents")
    print(f"lines also in the demo corpus: {check_demo_overlap(paths)}")


if __name__ == "__main__":
    main()
