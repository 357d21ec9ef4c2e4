"""Reading the raw corpus: files in a stable order, streamed, NFC-normalized, split by content.

    corpus = Corpus(params.paths.corpus, params.data)
    for piece in corpus.pieces():           # Piece(text, ends_document, is_val)
        ...
    corpus.replacements                      # undecodable bytes replaced by U+FFFD so far

Sources: a directory, a glob, or one file of .txt (documents separated by blank lines, or one
per file: data.txt_documents), .jsonl and .parquet (data.text_field), or a `datasets` dataset
saved to disk. Memory stays bounded whatever the input: text is read in fixed-size chunks and a
document longer than data.max_document_chars comes out in pieces, cut at a line break when there
is one (a .jsonl record or a row is read whole, so its size bounds memory there). All pieces of a
document go to the same split, chosen by a hash of its first piece, so the split does not depend on
file order and a document never straddles train and val.

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
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from pipeline.errors import PipelineError
from pipeline.params import Data

SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
READ_BYTES = 1 << 20          # bytes per read from a text file
SNIFF_BYTES = 8192            # a NUL byte in this many leading bytes marks a file as binary
# Blank lines (possibly holding spaces) separate documents.
_BLANK_LINES = re.compile(r"\n(?:[ \t\f\v]*\n)+")
# Surrogates never come from valid UTF-8: surrogateescape marks undecodable bytes with them, and a
# JSON "\ud800" escape produces them. Either way they cannot be encoded, so they are the errors.
_SURROGATES = re.compile("[\ud800-\udfff]")


class Piece(NamedTuple):      # a tuple: millions are made, and dataclass init is 5x slower
    text: str
    ends_document: bool   # False for all but the last piece of a document cut for length
    is_val: bool


def is_val(text: str, val_fraction: float) -> bool:
    """Deterministic, position-independent split: the hash of the text as a number in [0, 1)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


class Corpus:
    """The corpus named by paths.corpus. Resolving it checks that it exists and holds files."""

    def __init__(self, source: str | Path, data: Data):
        self.source = str(source)
        self.data = data
        self.replacements = 0
        self.sources = _resolve(self.source, data.format)

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

def _resolve(source: str, fmt: str) -> list[tuple[str, Path]]:
    path = Path(source)
    if path.is_dir() and _is_dataset_dir(path):
        return [("datasets", path)]
    if fmt == "datasets":
        raise PipelineError(f"paths.corpus {source} is not a dataset saved with save_to_disk "
                            "(no dataset_info.json/state.json or dataset_dict.json): fix the path "
                            "or data.format")
    if path.is_file():
        return [(_format_of(path, fmt, source), path)]
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)),
                       key=lambda p: p.relative_to(path).as_posix())
        if fmt == "auto":
            files = [p for p in files if p.suffix.lower() in SUFFIXES]
        if not files:
            kinds = "/".join(SUFFIXES) if fmt == "auto" else "any"
            raise PipelineError(f"paths.corpus {source} holds no {kinds} files: put the corpus there "
                                "or point paths.corpus at it")
        return [(_format_of(p, fmt, source), p) for p in files]
    if glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not files:
            raise PipelineError(f"paths.corpus {source}: no files match this glob: fix paths.corpus")
        return [(_format_of(p, fmt, source), p) for p in files]
    raise PipelineError(f"paths.corpus {source} does not exist: create it, or point paths.corpus "
                        "at a directory, glob or file of text (for the demo: make demo)")


def _is_dataset_dir(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file())


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _format_of(path: Path, fmt: str, source: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise PipelineError(f"{path} (from paths.corpus {source}): cannot tell its format from the "
                            f"suffix {path.suffix!r}: rename it, fix the glob, or set data.format") from None


def _check_not_binary(path: Path) -> None:
    with open(path, "rb") as fh:
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
    with open(path, "rb") as fh:
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
    with open(path, "rb") as fh:
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
    column = parquet.schema_arrow.field(field) if field in parquet.schema_arrow.names else None
    if column is None or not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise PipelineError(f"{path} has no string column {field!r} (columns: "
                            f"{', '.join(parquet.schema_arrow.names)}): set data.text_field")
    for batch in parquet.iter_batches(batch_size=1024, columns=[field]):
        yield from (text for text in batch.column(0).to_pylist() if text is not None)


def _dataset_texts(path: Path, field: str) -> Iterator[str]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = [loaded[name] for name in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
    for split in splits:
        if field not in split.column_names:
            raise PipelineError(f"dataset {path} has no column {field!r} (columns: "
                                f"{', '.join(split.column_names)}): set data.text_field")
        # iter() reads Arrow batches from the memory-mapped files: nothing is materialized
        for batch in split.select_columns([field]).iter(batch_size=1024):
            yield from (text for text in batch[field] if text is not None)


def _offset_note(path: Path, where: str | None) -> str:
    """For a text file, the byte offset of its first undecodable byte (found only on failure)."""
    if where is not None:
        return ""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0   # bytes handed to the decoder so far
    with open(path, "rb") as fh:
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
