"""Language identification offline, with lingua (github.com/pemistahl/lingua-py): its n-gram models
ship inside the package, Azerbaijani among its 75 languages, so nothing is downloaded at run time.

    check_codes(["az"])                        # an unknown code: one line naming the close ones
    detect = LanguageId(["az"]); detect(texts)  # ["az", "ru", None, ...] (ISO 639-1; None: unsure)

Cost decides the design. lingua's low-accuracy mode over all 75 languages classified ~500
documents/s on 2 cores here; over the CANDIDATES below ~2,400/s, on the first SAMPLE_CHARS
characters of each document: the languages an Azerbaijani web crawl mixes in (its neighbours and
the crawl's largest languages) are told apart, and text in any other language comes out as one of
them or as None, and is not kept unless listed. With clean.languages empty (keep all) only a
sample of documents is classified, for the report's language mix.
"""
from __future__ import annotations

import difflib

from lingua import Language, LanguageDetectorBuilder

from pipeline.core.errors import PipelineError

CANDIDATES = ("az", "tr", "ru", "en", "uk", "kk", "ka", "hy", "fa", "ar", "de", "fr", "es", "it", "pt", "pl",
              "nl", "zh", "ja", "ko")
SAMPLE_CHARS = 300


def _known() -> dict[str, Language]:
    return {language.iso_code_639_1.name.lower(): language for language in Language.all()}


def check_codes(codes: list[str]) -> None:
    """Each of `codes` must be an ISO 639-1 code lingua knows; else one line with the close ones."""
    known = _known()
    for code in codes:
        if code not in known:
            names = {language.name.lower(): c for c, language in known.items()}
            close = difflib.get_close_matches(code.lower(), list(known) + list(names), n=4, cutoff=0.5)
            hints = sorted({names.get(match, match) for match in close})
            suggestion = (f"close: {', '.join(f'{c} ({known[c].name.title()})' for c in hints)}" if hints
                          else "ISO 639-1 codes such as az, tr, ru, en")
            raise PipelineError(f"clean.languages: unknown language code {code!r} ({suggestion}): use "
                                "two-letter ISO 639-1 codes")


class LanguageId:
    """Classifies texts among CANDIDATES plus `also`, by their first SAMPLE_CHARS characters."""

    def __init__(self, also: list[str] = ()):
        known = _known()
        codes = sorted(set(CANDIDATES) | set(also))
        languages = [known[code] for code in codes if code in known]
        self._detector = (LanguageDetectorBuilder.from_languages(*languages)
                          .with_low_accuracy_mode().build())

    def __call__(self, texts: list[str]) -> list[str | None]:
        found = self._detector.detect_languages_in_parallel_of([text[:SAMPLE_CHARS] for text in texts])
        return [language.iso_code_639_1.name.lower() if language is not None else None for language in found]

