"""Reading the raw corpus: files in a stable order, streamed, NFC-normalized, split by content.

    corpus = Corpus(params.paths.corpus, params.data)
    for piece in corpus.pieces():           # Piece(text, ends_document, is_val)
        ...
    corpus.replacements                      # undecodable bytes replaced by U+FFFD so far
    corpus.skipped                           # {"broken_symlinks": [path, ...], ...}: left out, warned

Sources: a directory, a glob, or one file of .txt (documents separated by blank lines, or one
per file: data.txt_documents), .jsonl and .parquet (data.text_field), or a `datasets` dataset
saved to disk. Memory stays bounded whatever the input: text is read in fixed-size chunks and a
document longer than data.max_document_chars comes out in pieces, cut at a line break when there
is one (a .jsonl record or a row is read whole, so its size bounds memory there). All pieces of a
document go to the same split, chosen by a hash of its first piece, so the split does not depend on
file order and a document never straddles train and val.

Nothing is left out without a word. A file or directory that cannot be read, or a dataset that
does not load, is an error: training on part of the corpus without noticing costs more than
fixing a permission. Entries that cannot hold text are skipped, listed in `skipped` and counted
in a warning on stderr, one line per kind: broken symlinks, FIFOs, sockets and devices (opening a
FIFO would wait forever), and symlinked directories (not followed, as links can loop). Hidden
entries and, with data.format: auto, files of other suffixes are not corpus and are passed over.

Bytes that are not UTF-8: by default (data.encoding_errors: replace) each becomes U+FFFD and is
counted, and the count reaches the manifest and the terminal. Large scraped corpora nearly always
hold a few stray bytes, and failing a long run on one costs more than losing it; a file in the
wrong encoding shows up as thousands. data.encoding_errors: strict fails at the first one instead,
naming the file and the byte offset.
"""
from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import re
import stat
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator, NamedTuple

from pipeline.core.errors import PipelineError
from pipeline.core.params import Data

if TYPE_CHECKING:
    import datasets   # imported where used: it is slow to import and only one format needs it

SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
READ_BYTES = 1 << 20          # bytes per read from a text file
SNIFF_BYTES = 8192            # a NUL byte in this many leading bytes marks a file as binary
# Blank lines (possibly holding spaces) separate documents.
_BLANK_LINES = re.compile(r"\n(?:[ \t\f\v]*\n)+")
# Surrogates never come from valid UTF-8: surrogateescape marks undecodable bytes with them, and a
# JSON "\ud800" escape produces them. Either way they cannot be encoded, so they are the errors.
_SURROGATES = re.compile("[\ud800-\udfff]")
DATASET_FILES = ("dataset_info.json", "state.json")   # a Dataset saved with save_to_disk holds both
DATASET_DICT_FILE = "dataset_dict.json"
# What a path in the corpus turns out to be (_kind_of).
FILE, DIRECTORY, LINKED_DIRECTORY, BROKEN_LINK, SPECIAL = (
    "file", "directory", "linked directory", "broken link", "special")
# Kinds skipped with a warning: the key in Corpus.skipped, and how the warning describes them.
SKIPPED = {
    BROKEN_LINK: ("broken_symlinks", "broken symlink(s)",
                  "their targets do not exist: fix or remove the links"),
    LINKED_DIRECTORY: ("symlinked_directories", "symlinked director(y/ies)",
                       "links to directories are not followed: link the files instead, or move the "
                       "directory into the corpus"),
    SPECIAL: ("special_files", "FIFO(s), socket(s) or device(s)",
              "only regular files are read: remove them from the corpus"),
}
WARN_PATHS = 3   # paths named in a warning; the rest are counted


class Piece(NamedTuple):      # a tuple: millions are made, and dataclass init is 5x slower
    text: str
    ends_document: bool   # False for all but the last piece of a document cut for length
    is_val: bool


def is_val(text: str, val_fraction: float) -> bool:
    """Deterministic, position-independent split: the hash of the text as a number in [0, 1)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def check_split_documents(corpus: str | Path, train_documents: int, val_documents: int) -> None:
    """Both splits must hold a document: data.val_fraction can leave either empty."""
    if not train_documents and not val_documents:
        raise PipelineError(f"corpus {corpus} holds no text (every file is empty or blank): "
                            "add documents or point paths.corpus elsewhere")
    for name, count, hint in (("validation", val_documents, "raise"), ("training", train_documents, "lower")):
        if not count:
            raise PipelineError(f"data.val_fraction leaves no {name} documents among the "
                                f"{train_documents + val_documents} of corpus {corpus}: {hint} "
                                "data.val_fraction or add documents")


class Corpus:
    """The corpus named by paths.corpus. Resolving it checks that it exists and holds files."""

    def __init__(self, source: str | Path, data: Data):
        self.source = str(source)
        self.data = data
        self.replacements = 0
        # entries left out, by kind (see SKIPPED): for the manifest; the terminal gets a warning
        self.skipped: dict[str, list[str]] = {key: [] for key, _, _ in SKIPPED.values()}
        self.sources = _resolve(self.source, data.format, self.skipped)
        for paths in self.skipped.values():
            paths.sort()   # directory listings come in no set order; manifests should not change
        _warn_skipped(self.source, self.skipped)

    def pieces(self) -> Iterator[Piece]:
        """Every document, as pieces of at most data.max_document_chars, with its split."""
        self.replacements = 0
        val = False
        start = True
        for text, ends in self._texts():
            if start:
                val = is_val(text, self.data.val_fraction)
            yield Piece(text, ends, val)
            start = ends

    def texts(self) -> Iterator[str]:
        """Every document as pieces of at most data.max_document_chars, without a split: what the
        clean stage reads (it writes each piece as a document)."""
        self.replacements = 0
        for text, _ in self._texts():
            yield text

    def size_bytes(self) -> int:
        """The bytes of its files (0 for a dataset, whose size on disk is not its text's): a
        progress bar's total."""
        return sum(path.stat().st_size for fmt, path in self.sources if fmt != "datasets")

    def _texts(self) -> Iterator[tuple[str, bool]]:
        for fmt, path in self.sources:
            if fmt == "txt":
                _check_not_binary(path)
                yield from _cut(_read_chunks(path, self), self.data.max_document_chars,
                                whole=self.data.txt_documents == "file")
            elif fmt == "jsonl":
                _check_not_binary(path)
                yield from self._whole(_jsonl_texts(path, self))
            elif fmt == "parquet":
                yield from self._whole(self._clean_all(_parquet_texts(path, self.data.text_field), path))
            else:
                yield from self._whole(self._clean_all(_dataset_texts(path, self.data.text_field), path))

    def _whole(self, texts: Iterable[str]) -> Iterator[tuple[str, bool]]:
        """Records that arrive whole (one per row): normalize each, cut the long ones."""
        for text in texts:
            yield from _cut(iter((text,)), self.data.max_document_chars, whole=True)

    def _clean_all(self, texts: Iterable[str], path: Path) -> Iterator[str]:
        for text in texts:
            yield self.clean(text, path, "")

    def clean(self, text: str, path: Path, where: str | None) -> str:
        """Replace and count undecodable input, or fail under data.encoding_errors: strict.

        where: ":LINE" for a jsonl line, "" for a row of a columnar file, None for a text file
        (whose first bad byte is then located for the message).
        """
        if not _SURROGATES.search(text):
            return text
        if self.data.encoding_errors == "strict":
            raise PipelineError(f"{path}{where or ''} is not valid UTF-8{_offset_note(path, where)}: "
                                "fix the file, or set data.encoding_errors: replace")
        self.replacements += len(_SURROGATES.findall(text))
        return _SURROGATES.sub("\ufffd", text)


# --- finding the files ---------------------------------------------------------------------------

def _resolve(source: str, fmt: str, skipped: dict[str, list[str]]) -> list[tuple[str, Path]]:
    path = Path(source)
    kind = _kind_of(path)
    if kind in (DIRECTORY, LINKED_DIRECTORY):   # the corpus itself may well be a link
        return _resolve_directory(path, source, fmt, skipped)
    if fmt == "datasets":
        raise _not_a_dataset(source)
    if kind == FILE:
        _check_readable(path)
        return [(_format_of(path, fmt, source), path)]
    if kind == BROKEN_LINK:
        raise PipelineError(f"paths.corpus {source} is a symlink to {os.readlink(path)}, which does not "
                            "exist: fix the link or paths.corpus")
    if kind == SPECIAL:
        raise PipelineError(f"paths.corpus {source} is not a regular file (a FIFO, socket or device): "
                            "point paths.corpus at a directory, glob or file of text")
    if glob.has_magic(source):
        return _resolve_glob(source, fmt, skipped)
    raise PipelineError(f"paths.corpus {source} does not exist: create it, or point paths.corpus "
                        "at a directory, glob or file of text (for the demo: make demo)")


def _resolve_directory(path: Path, source: str, fmt: str,
                       skipped: dict[str, list[str]]) -> list[tuple[str, Path]]:
    names = {entry.name for entry in _list_dir(path)}
    if DATASET_DICT_FILE in names or set(DATASET_FILES) <= names:
        return [("datasets", path)]
    if fmt in ("auto", "datasets") and names & set(DATASET_FILES):
        missing = next(name for name in DATASET_FILES if name not in names)
        raise PipelineError(f"paths.corpus {source} looks like a dataset saved with save_to_disk, but its "
                            f"{missing} is missing: save the dataset again, or fix paths.corpus")
    if fmt == "datasets":
        raise _not_a_dataset(source)
    files = sorted(_walk_files(path, fmt, skipped), key=lambda p: p.relative_to(path).as_posix())
    if not files:
        kinds = "/".join(SUFFIXES) if fmt == "auto" else "any"
        raise PipelineError(f"paths.corpus {source} holds no {kinds} files: put the corpus there "
                            "or point paths.corpus at it")
    for file in files:   # now, not after an hour of BPE training on the files before it
        _check_readable(file)
    return [(_format_of(p, fmt, source), p) for p in files]


def _resolve_glob(source: str, fmt: str, skipped: dict[str, list[str]]) -> list[tuple[str, Path]]:
    files = []
    for path in sorted(Path(p) for p in glob.glob(source, recursive=True)):
        kind = _kind_of(path)
        if kind == FILE:
            files.append(path)
        elif kind in (BROKEN_LINK, SPECIAL):   # directories: the glob names their files itself
            skipped[SKIPPED[kind][0]].append(str(path))
    if not files:
        raise PipelineError(f"paths.corpus {source}: no files match this glob: fix paths.corpus")
    for file in files:
        _check_readable(file)
    return [(_format_of(p, fmt, source), p) for p in files]


def _walk_files(root: Path, fmt: str, skipped: dict[str, list[str]]) -> Iterator[Path]:
    """The regular files under root that are part of the corpus; other entries go to skipped.

    Not Path.rglob: it passes over directories it cannot list, and over links, without a word.
    """
    pending = [root]
    while pending:
        for entry in _list_dir(pending.pop()):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            kind = _kind_of(path)
            if kind == DIRECTORY:
                pending.append(path)
            elif kind == LINKED_DIRECTORY:
                skipped[SKIPPED[kind][0]].append(str(path))
            elif fmt == "auto" and path.suffix.lower() not in SUFFIXES:
                continue   # not corpus text by its name, whatever it is
            elif kind == FILE:
                yield path
            elif kind in SKIPPED:
                skipped[SKIPPED[kind][0]].append(str(path))


def _kind_of(path: Path) -> str | None:
    """FILE, DIRECTORY, LINKED_DIRECTORY, BROKEN_LINK or SPECIAL; None when nothing is there."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path):   # its target is missing, or links loop
            return BROKEN_LINK
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            return None
        raise PipelineError(f"{path} cannot be read ({exc.strerror}): make the directories above it "
                            "readable (chmod a+rx), or fix paths.corpus") from None
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return LINKED_DIRECTORY if os.path.islink(path) else DIRECTORY
    return SPECIAL


def _list_dir(directory: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as exc:
        raise PipelineError(f"directory {directory} cannot be read ({exc.strerror}): make it readable "
                            "(chmod a+rx), or move it out of the corpus") from None


def _open_bytes(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise PipelineError(f"{path} cannot be read ({exc.strerror}): make it readable (chmod a+r), "
                            "or move it out of the corpus") from None


def _check_readable(path: Path) -> None:
    _open_bytes(path).close()


def _not_a_dataset(source: str) -> PipelineError:
    return PipelineError(f"paths.corpus {source} is not a dataset saved with save_to_disk "
                         "(no dataset_info.json/state.json or dataset_dict.json): fix the path "
                         "or data.format")


def _warn_skipped(source: str, skipped: dict[str, list[str]]) -> None:
    for key, label, advice in SKIPPED.values():
        paths = skipped[key]
        if paths:
            more = len(paths) - WARN_PATHS
            named = ", ".join(paths[:WARN_PATHS]) + (f" and {more} more" if more > 0 else "")
            print(f"corpus: warning: skipped {len(paths)} {label} in paths.corpus {source} ({named}): "
                  f"{advice}", file=sys.stderr)


def _format_of(path: Path, fmt: str, source: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise PipelineError(f"{path} (from paths.corpus {source}): cannot tell its format from the "
                            f"suffix {path.suffix!r}: rename it, fix the glob, or set data.format") from None


def _check_not_binary(path: Path) -> None:
    with _open_bytes(path) as fh:
        head = fh.read(SNIFF_BYTES)
    if b"\0" in head:
        raise PipelineError(f"{path} looks binary (NUL bytes in its first {SNIFF_BYTES} bytes): remove "
                            "it from the corpus or fix the glob in paths.corpus (UTF-16 text: convert "
                            "it to UTF-8)")


# --- reading text --------------------------------------------------------------------------------

def _read_chunks(path: Path, corpus: Corpus) -> Iterator[str]:
    """Decoded text in chunks of about READ_BYTES, with \r\n and \r turned into \n.

    Strict decoding first, as it needs no scan for errors afterwards; only a block that fails is
    decoded again leniently, from the same decoder state, and cleaned.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    held_cr = ""   # a \r at the end of a block may be the first half of \r\n
    with _open_bytes(path) as fh:
        while True:
            block = fh.read(READ_BYTES)
            final = not block
            state = decoder.getstate()
            try:
                text = decoder.decode(block, final)
            except UnicodeDecodeError:
                lenient = codecs.getincrementaldecoder("utf-8")("surrogateescape")
                lenient.setstate(state)
                text = corpus.clean(lenient.decode(block, final), path, None)
                decoder.setstate(lenient.getstate())
            text = held_cr + text
            held_cr = ""
            if text.endswith("\r") and not final:
                text, held_cr = text[:-1], "\r"
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if final:
                return


def _cut(chunks: Iterator[str], limit: int, whole: bool) -> Iterator[tuple[str, bool]]:
    """(piece, ends_document) from a stream of text chunks.

    whole: the stream is one document; else documents are separated by blank lines. A document
    longer than `limit` comes out in pieces of at most `limit` characters, each ending at the last
    line break inside the limit when there is one.
    """
    buf = ""
    started = False   # a piece of the current document has already been yielded
    for chunk in chunks:
        buf += chunk
        if not whole:
            *docs, buf = _BLANK_LINES.split(buf)
            for doc in docs:
                doc = doc.rstrip() if started else doc.strip()
                if len(doc) <= limit and (doc or started):
                    yield _nfc(doc), True          # the common case, without a generator per doc
                elif doc:
                    yield from _pieces_of(doc, limit)
                started = False
        if not started:
            buf = buf.lstrip()
        while len(buf) > limit:
            piece, buf = _split_at_line(buf, limit)
            yield _nfc(piece), False
            started = True
    tail = buf.strip() if not started else buf.rstrip()
    if tail:
        yield from _pieces_of(tail, limit)
    elif started:
        # the document ended exactly at a cut: close it with an empty final piece
        yield "", True


def _pieces_of(doc: str, limit: int) -> Iterator[tuple[str, bool]]:
    while len(doc) > limit:
        piece, doc = _split_at_line(doc, limit)
        yield _nfc(piece), False
    yield _nfc(doc), True


def _split_at_line(text: str, limit: int) -> tuple[str, str]:
    # Cut before the line break, so that a blank-line separator right after the cut stays whole.
    cut = text.rfind("\n", 1, limit)
    cut = cut if cut > 0 else limit
    return text[:cut], text[cut:]


def _nfc(text: str) -> str:
    # isascii() is O(1) in CPython, and ASCII is always NFC
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", text)


def _jsonl_texts(path: Path, corpus: Corpus) -> Iterator[str]:
    field = corpus.data.text_field
    with _open_bytes(path) as fh:
        for number, raw in enumerate(fh, start=1):
            where = f":{number}"
            line = corpus.clean(raw.decode("utf-8", "surrogateescape"), path, where)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PipelineError(f"{path}{where} is not valid JSON ({exc.msg}): fix the line") from None
            text = record.get(field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise PipelineError(f"{path}{where} has no string field {field!r}: set data.text_field "
                                    "to the field that holds the text")
            yield corpus.clean(text, path, where)


def _parquet_texts(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise PipelineError(f"{path} is not a readable parquet file ({exc}): remove it or fix "
                            "paths.corpus") from None
    schema = parquet.schema_arrow
    if field not in schema.names:
        raise PipelineError(f"{path} has no column {field!r} (columns: {', '.join(schema.names)}): "
                            "set data.text_field to the column that holds the text")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise PipelineError(f"{path}: column {field!r} (data.text_field) holds {kind}, not text: set "
                            "data.text_field to a string column, or write the text as strings")
    try:
        for batch in parquet.iter_batches(batch_size=1024, columns=[field]):
            yield from (text for text in batch.column(0).to_pylist() if text is not None)
    except (pa.ArrowException, OSError) as exc:   # a damaged row group shows only when it is read
        raise PipelineError(f"{path} is damaged ({_one_line(exc)}): replace it, or remove it from the "
                            "corpus") from None


def _dataset_texts(path: Path, field: str) -> Iterator[str]:
    import datasets
    import pyarrow as pa

    loaded = _load_dataset(path)
    splits = [loaded[name] for name in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
    for split in splits:
        if field not in split.column_names:
            raise PipelineError(f"dataset {path} has no column {field!r} (columns: "
                                f"{', '.join(split.column_names)}): set data.text_field")
        try:
            # iter() reads Arrow batches from the memory-mapped files: nothing is materialized
            for batch in split.select_columns([field]).iter(batch_size=1024):
                yield from (text for text in batch[field] if text is not None)
        except (pa.ArrowException, OSError) as exc:
            raise _damaged_dataset(path, exc) from None


def _load_dataset(path: Path) -> datasets.Dataset | datasets.DatasetDict:
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:   # datasets trusts its own metadata: damage surfaces as any error type
        raise _damaged_dataset(path, exc) from None


def _damaged_dataset(path: Path, exc: Exception) -> PipelineError:
    if isinstance(exc, PermissionError):
        return PipelineError(f"dataset {path} cannot be read ({exc.strerror}: {exc.filename}): make it "
                             "readable (chmod -R a+rX), or fix paths.corpus")
    return PipelineError(f"dataset {path} cannot be read, it looks damaged ({type(exc).__name__}: "
                         f"{_one_line(exc)}): save it again with save_to_disk, or fix paths.corpus")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _offset_note(path: Path, where: str | None) -> str:
    """For a text file, the byte offset of its first undecodable byte (found only on failure)."""
    if where is not None:
        return ""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0   # bytes handed to the decoder so far
    with _open_bytes(path) as fh:
        while True:
            block = fh.read(1 << 20)
            # exc.start counts from the start of the bytes the decoder still held back
            held = len(decoder.getstate()[0])
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                return f" (first bad byte at offset {offset - held + exc.start})"
            if not block:
                return ""
            offset += len(block)
