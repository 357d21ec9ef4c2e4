"""Token files: a flat array of token ids behind a self-describing header.

Layout (little-endian), as llm.c does it: a fixed 256-byte header, then `count` ids.

    offset 0   8s   magic  b"BGPTTOK\\0"
    offset 8   u32  format version (1)
    offset 12  u32  bytes per token (2: uint16, 4: uint32)
    offset 16  u64  token count
    offset 24  ...  zero padding to 256 bytes

Readers check every field against the file size before trusting a byte.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from pipeline.atomic import staging_file
from pipeline.errors import PipelineError

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
        self._fh.write(arr.astype(self.dtype, copy=False).tobytes())
        self.count += arr.size

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._fh.seek(0)
                self._fh.write(_HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.count))
                self._fh.flush()
            self._fh.close()
        finally:
            self._staging.__exit__(exc_type, exc, tb)


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
