"""Encoding the corpus into train.bin and val.bin in one streaming pass: both splits in chunks,
ids appended to the token files as they come, so memory does not grow with the corpus. An
end-of-text token follows every document.

    splits = encode_splits(corpus, tokenizer, directory, dtype)   # {"train": Split, "val": Split}
    splits["train"].tokens, splits["train"].documents, unigram_entropy(splits["train"].counts)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator

import numpy as np
from tokenizers import Tokenizer

from pipeline.data.bpe import EOT
from pipeline.data.cleaned import CleanedCorpus
from pipeline.data.corpus import utf8_len
from pipeline.data.readahead import read_ahead
from pipeline.data.tokens import TRAIN_FILE, VAL_FILE, TokenWriter

# Characters handed to one encode_batch call per split. Larger chunks are no faster, and a chunk
# of many big documents is what made encoding peak at 2.6 GB on a 200 MB corpus (bench/README.md).
CHUNK_CHARS = 4_000_000


@dataclass
class Split:
    writer: TokenWriter
    counts: np.ndarray | None = None   # token frequencies, kept for the train split
    documents: int = 0
    bytes: int = 0

    @property
    def tokens(self) -> int:
        return self.writer.count


def encode_splits(source: CleanedCorpus, tokenizer: Tokenizer, directory: Path, dtype: np.dtype) -> dict[str, Split]:
    vocab_size = tokenizer.get_vocab_size()
    eot = np.array([tokenizer.token_to_id(EOT)], dtype=dtype)
    with TokenWriter(directory / TRAIN_FILE, dtype) as train, TokenWriter(directory / VAL_FILE, dtype) as val:
        splits = {"train": Split(train, counts=np.zeros(vocab_size, np.int64)), "val": Split(val)}
        for batch in read_ahead(_batches(source)):
            encodings = tokenizer.encode_batch_fast(batch.texts, add_special_tokens=False)
            parts = []
            for encoding, ends in zip(encodings, batch.ends):
                parts.append(np.asarray(encoding.ids, dtype=dtype))
                if ends:
                    parts.append(eot)
            ids = np.concatenate(parts)
            split = splits[batch.split]
            split.writer.write(ids)
            split.documents += sum(batch.ends)
            split.bytes += batch.bytes
            if split.counts is not None:
                split.counts += np.bincount(ids, minlength=vocab_size)
    return splits


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the token frequencies `counts`."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@dataclass
class _Batch:
    split: str
    texts: list[str] = field(default_factory=list)
    ends: list[bool] = field(default_factory=list)
    chars: int = 0
    bytes: int = 0


def _batches(source: CleanedCorpus) -> Generator[_Batch, None, None]:
    """The pieces of each split, gathered into batches of about CHUNK_CHARS characters."""
    open_batches = {"train": _Batch("train"), "val": _Batch("val")}
    for piece in source.pieces(progress="tokenize: encode"):
        batch = open_batches["val" if piece.is_val else "train"]
        batch.texts.append(piece.text)
        batch.ends.append(piece.ends_document)
        batch.chars += len(piece.text)
        batch.bytes += utf8_len(piece.text)
        if batch.chars >= CHUNK_CHARS:
            yield batch
            open_batches[batch.split] = _Batch(batch.split)
    yield from (batch for batch in open_batches.values() if batch.texts)
