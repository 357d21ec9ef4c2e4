"""Token files: a flat array of token ids behind a self-describing header.

Layout (little-endian), as llm.c does it: a fixed 256-byte header, then `count` ids.

    offset 0   8s   magic  b"BGPTTOK\\0"
    offset 8   u32  format version (1)
    offset 12  u32  bytes per token (2: uint16, 4: uint32)
    offset 16  u64  token count
    offset 24  ...  zero padding to 256 bytes

Readers check every field against the file size before trusting a byte. The token directory's
manifest (TokenManifest) is defined here too, with the file names: every stage reads them through
this module.
"""
from __future__ import annotations

import os
import struct
from contextlib import contextmanager
from pathlib import Path

from typing import Any, Iterator

import numpy as np

from pipeline.core.atomic import staging_file
from pipeline.core.errors import PipelineError
from pipeline.core.provenance import file_sha256
from pipeline.core.record import Record

MAGIC = b"BGPTTOK\0"
VERSION = 1
HEADER_BYTES = 256
_HEADER = struct.Struct("<8sIIQ")
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The narrowest dtype that holds every id of a vocabulary of this size."""
    if vocab_size <= 2**16:
        return _DTYPES[2]
    if vocab_size <= 2**32:
        return _DTYPES[4]
    raise PipelineError(f"tokenizer.vocab_size {vocab_size} does not fit in uint32 token files")


class TokenWriter:
    """Append token arrays to a token file that appears, complete, only on a clean close.

    with TokenWriter("data/tokens/train.bin", np.uint16) as out:
        out.write(ids)
    """

    def __init__(self, path: str | Path, dtype: np.dtype | type):
        self.path = Path(path)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype.itemsize not in _DTYPES:
            raise ValueError(f"token dtype must be uint16 or uint32, not {self.dtype}")
        self.count = 0
        self._limit = np.iinfo(self.dtype).max

    def __enter__(self) -> TokenWriter:
        self._staging = staging_file(self.path)
        self._tmp = self._staging.__enter__()
        self._fh = open(self._tmp, "wb")
        self._fh.write(b"\0" * HEADER_BYTES)
        return self

    def write(self, ids: np.ndarray | list[int]) -> None:
        arr = np.asarray(ids)
        if arr.size == 0:
            return
        if arr.min() < 0 or arr.max() > self._limit:
            raise ValueError(f"token id out of range for {self.dtype}: {arr.min()}..{arr.max()}")
        with self._named_errors():
            self._fh.write(arr.astype(self.dtype, copy=False).tobytes())
        self.count += arr.size

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abandon(exc)
            return
        try:
            with self._named_errors():
                self._fh.seek(0)
                self._fh.write(_HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.count))
                self._fh.close()
        except OSError as error:   # a close that failed (a full disk) leaves no file that looks whole
            self._abandon(error)
            raise
        self._staging.__exit__(None, None, None)

    def _abandon(self, exc: BaseException) -> None:
        try:
            self._fh.close()
        except OSError:   # the buffered bytes a full disk refused, again
            pass
        self._staging.__exit__(type(exc), exc, exc.__traceback__)

    @contextmanager
    def _named_errors(self) -> Iterator[None]:
        """A buffered write's OSError (a full disk) names no file: name this one, so the CLI can
        say which output and which params key."""
        try:
            yield
        except OSError as exc:
            if exc.filename:
                raise
            raise OSError(exc.errno, exc.strerror, str(self._tmp)) from exc


def write_tokens(path: str | Path, ids: np.ndarray, dtype: np.dtype | type | None = None) -> None:
    """Write a whole array at once (tests, small files)."""
    with TokenWriter(path, dtype or ids.dtype) as out:
        out.write(ids)


def read_header(path: str | Path) -> tuple[np.dtype, int]:
    """(dtype, count) after checking magic, version, dtype and size; a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"token file {path} not found: run the tokenize stage first")
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(_HEADER.size)
    if len(head) < _HEADER.size or size < HEADER_BYTES:
        raise PipelineError(f"token file {path} is truncated ({size} bytes): rerun the tokenize stage")
    magic, version, itemsize, count = _HEADER.unpack(head)
    if magic != MAGIC:
        raise PipelineError(f"{path} is not a budgetgpt token file (bad magic): rerun the tokenize stage")
    if version != VERSION:
        raise PipelineError(f"token file {path} has format version {version}, this code reads {VERSION}: "
                            "rerun the tokenize stage")
    if itemsize not in _DTYPES:
        raise PipelineError(f"token file {path} declares {itemsize} bytes per token (expected 2 or 4)")
    expected = HEADER_BYTES + count * itemsize
    if size != expected:
        raise PipelineError(f"token file {path} holds {size} bytes but its header promises {expected}: "
                            "it is truncated or corrupt; rerun the tokenize stage")
    return _DTYPES[itemsize], count


def read_tokens(path: str | Path) -> np.ndarray:
    """The ids as a read-only memory map: nothing is loaded until it is indexed."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


# ---- the token directory: train.bin, val.bin and the manifest that describes them ---------------

TRAIN_FILE = "train.bin"
VAL_FILE = "val.bin"
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"   # inside the tokenizer directory, as save_pretrained names it


class TokenManifest(Record):
    """data/tokens/manifest.json: what tokenize made, read by every later stage through `load`."""

    FORMAT = 1
    WRITTEN_BY = "tokenize"

    train_tokens: int
    val_tokens: int
    documents: dict[str, int]
    train_bytes: int
    val_bytes: int
    bytes_per_token: float
    vocab_size: int
    dtype: str
    eot_token_id: int
    sha256: dict[str, str]           # per token file
    tokenizer_sha256: str
    unigram_entropy_nats: float
    invalid_utf8_replacements: int
    skipped_entries: dict[str, list[str]] = {}   # corpus entries skipped, by reason
    params: dict[str, Any]
    versions: dict[str, str]
    git_revision: str | None


def load(tokens_dir: str | Path, tokenizer_dir: str | Path, *, verify_files: bool = True) -> TokenManifest:
    """The manifest, checked against the tokenizer a model will be trained or scored with and,
    with verify_files, against the token files themselves (hash, count, id range).

    A train stage that ran on token files or a tokenizer other than the manifest's would ship a
    model whose tokenizer does not match its weights: every mismatch is an error here.
    """
    tokens_dir, tokenizer_dir = Path(tokens_dir), Path(tokenizer_dir)
    manifest = TokenManifest.read(tokens_dir / MANIFEST_FILE)
    rerun = "rerun the tokenize stage (python -m pipeline tokenize)"
    tokenizer_file = tokenizer_dir / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise PipelineError(f"tokenizer {tokenizer_file} not found: {rerun}")
    digest = file_sha256(tokenizer_file)
    if digest != manifest.tokenizer_sha256:
        raise PipelineError(f"{tokenizer_file} is not the tokenizer {tokens_dir / MANIFEST_FILE} was made with "
                            f"(sha256 {digest[:12]}..., the manifest says {manifest.tokenizer_sha256[:12]}...): {rerun}")
    vocab = _vocab_size(tokenizer_file)
    if vocab != manifest.vocab_size:
        raise PipelineError(f"{tokens_dir / MANIFEST_FILE} says vocab_size {manifest.vocab_size} but {tokenizer_file} "
                            f"has {vocab} tokens: {rerun}")
    if verify_files:
        for name, count in ((TRAIN_FILE, manifest.train_tokens), (VAL_FILE, manifest.val_tokens)):
            _verify_file(tokens_dir / name, manifest.sha256.get(name), count, manifest.vocab_size, rerun)
    return manifest


def _vocab_size(tokenizer_file: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()


def _verify_file(path: Path, sha256: str | None, count: int, vocab_size: int, rerun: str) -> None:
    _, found = read_header(path)
    if found != count:
        raise PipelineError(f"{path} holds {found:,} tokens but its manifest says {count:,}: {rerun}")
    if file_sha256(path) != sha256:
        raise PipelineError(f"{path} is not the file its manifest describes (sha256 differs): {rerun}")
    ids = read_tokens(path)
    top = int(ids.max()) if len(ids) else -1
    if top >= vocab_size:
        raise PipelineError(f"{path} holds token id {top}, outside the vocabulary of {vocab_size}: {rerun}")
