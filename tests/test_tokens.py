"""Token files: the header is checked before a byte is trusted; writes are all or nothing."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.data.tokens import HEADER_BYTES, MAGIC, TokenWriter, dtype_for_vocab, read_header, read_tokens, write_tokens


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_round_trip(tmp_path, dtype):
    ids = np.arange(0, 70_000, 7, dtype=np.int64) % np.iinfo(dtype).max
    write_tokens(tmp_path / "t.bin", ids, dtype)
    got = read_tokens(tmp_path / "t.bin")
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, ids)
    assert (tmp_path / "t.bin").stat().st_size == HEADER_BYTES + ids.size * np.dtype(dtype).itemsize


def test_writer_appends_chunks_and_an_empty_file_reads_back_empty(tmp_path):
    with TokenWriter(tmp_path / "t.bin", np.uint16) as out:
        out.write([1, 2, 3])
        out.write(np.array([], dtype=np.uint16))
        out.write(np.array([65535], dtype=np.int64))
    assert read_tokens(tmp_path / "t.bin").tolist() == [1, 2, 3, 65535]
    write_tokens(tmp_path / "empty.bin", np.zeros(0, np.uint16))
    assert read_header(tmp_path / "empty.bin")[1] == 0 and read_tokens(tmp_path / "empty.bin").size == 0


def test_ids_out_of_range_are_refused(tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        write_tokens(tmp_path / "t.bin", np.array([70_000]), np.uint16)
    assert not (tmp_path / "t.bin").exists()


def test_a_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with TokenWriter(tmp_path / "t.bin", np.uint16) as out:
            out.write([1, 2, 3])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_dtype_for_vocab():
    assert dtype_for_vocab(2**16) == np.uint16
    assert dtype_for_vocab(2**16 + 1) == np.uint32
    with pytest.raises(PipelineError, match="tokenizer.vocab_size"):
        dtype_for_vocab(2**32 + 1)


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "t.bin"
    write_tokens(path, np.arange(100, dtype=np.uint16))
    return path


def _patch(path, offset, fmt, value):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="not found: run the tokenize stage"):
        read_header(tmp_path / "none.bin")


def test_truncated_file(good):
    good.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(PipelineError, match="header promises"):
        read_tokens(good)
    good.write_bytes(good.read_bytes()[:100])
    with pytest.raises(PipelineError, match="truncated"):
        read_tokens(good)


def test_bad_magic(good):
    _patch(good, 0, "8s", b"NOTTOKEN")
    with pytest.raises(PipelineError, match="bad magic"):
        read_tokens(good)


def test_wrong_version(good):
    _patch(good, len(MAGIC), "<I", 2)
    with pytest.raises(PipelineError, match="format version 2, this code reads 1"):
        read_tokens(good)


def test_impossible_token_width(good):
    _patch(good, len(MAGIC) + 4, "<I", 3)
    with pytest.raises(PipelineError, match="3 bytes per token"):
        read_tokens(good)


def test_count_that_disagrees_with_the_size(good):
    _patch(good, len(MAGIC) + 8, "<Q", 101)
    with pytest.raises(PipelineError, match="holds 456 bytes but its header promises 458"):
        read_tokens(good)
