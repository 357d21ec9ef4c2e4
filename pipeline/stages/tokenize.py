"""The tokenize stage: corpus -> byte-level BPE tokenizer + train/val token files + manifest.

    python -m pipeline tokenize --params params.yaml [--params params/demo.yaml]

Two streaming passes over the corpus: the first trains the BPE on (a capped sample of) the train
split, the second encodes both splits in chunks and appends ids to the token files as it goes,
so memory does not grow with the corpus. An end-of-text token follows every document. Both
output directories appear whole, together, or not at all.
"""
from __future__ import annotations

import queue
import resource
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Iterator, TypeVar

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from pipeline.core import provenance
from pipeline.core.atomic import staging_dir
from pipeline.data.corpus import Corpus
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.data.tokens import (MANIFEST_FILE, TOKENIZER_FILE, TRAIN_FILE, VAL_FILE, TokenManifest, TokenWriter,
                             dtype_for_vocab)
from pipeline.registry import declared_params

EOT = "<|endoftext|>"
SPECIAL_TOKENS = (EOT,)
BYTE_ALPHABET = 256
# Characters handed to one encode_batch call per split. Larger chunks are no faster, and a chunk
# of many big documents is what made encoding peak at 2.6 GB on a 200 MB corpus (bench/README.md).
CHUNK_CHARS = 4_000_000
BATCH_CHARS = 1_000_000   # characters per batch handed to the BPE trainer
T = TypeVar("T")


def run(params: Params, *, corpus: Path, tokenizer: Path, tokens: Path) -> TokenManifest:
    """Train the tokenizer on `corpus` and write it to `tokenizer`; encode into `tokens`."""
    corpus, tokenizer_dir, tokens_dir = Path(corpus), Path(tokenizer), Path(tokens)
    _check_vocab(params.tokenizer.vocab_size)
    source = Corpus(corpus, params.data)
    started = time.perf_counter()

    tokenizer, sample = _train(source, params)
    sample.seconds = time.perf_counter() - started
    sample.peak_rss_mb = _peak_rss_mb()
    with staging_dir(tokenizer_dir) as tok_stage, staging_dir(tokens_dir) as tokens_stage:
        _save_tokenizer(tokenizer, tok_stage)
        # text that happens to spell "<|endoftext|>" is text, not a document boundary
        tokenizer.encode_special_tokens = True
        dtype = dtype_for_vocab(tokenizer.get_vocab_size())
        splits = _encode(source, tokenizer, tokens_stage, dtype)
        _check_counts(corpus, splits["train"].documents, splits["val"].documents)
        manifest = _manifest(params, splits, tokenizer, dtype, tok_stage, tokens_stage, source)
        manifest.write(tokens_stage / MANIFEST_FILE)
    _print_summary(corpus, manifest, sample, time.perf_counter() - started)
    return manifest


def _check_vocab(vocab_size: int) -> None:
    smallest = BYTE_ALPHABET + len(SPECIAL_TOKENS) + 1
    if vocab_size < smallest:
        raise PipelineError(f"tokenizer.vocab_size {vocab_size} leaves no room for merges: it must be "
                            f"at least {smallest} (256 byte tokens + {len(SPECIAL_TOKENS)} special "
                            "+ 1 merge); 4096-50257 is usual")
    dtype_for_vocab(vocab_size)


# --- pass 1: train the BPE -----------------------------------------------------------------------

@dataclass
class _Sample:
    bytes: int = 0
    capped: bool = False
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    seen_train: int = 0
    seen_val: int = 0


def _train(source: Corpus, params: Params) -> tuple[Tokenizer, _Sample]:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=params.tokenizer.vocab_size,
        min_frequency=params.tokenizer.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sample = _Sample()
    tokenizer.train_from_iterator(_read_ahead(_sample_texts(source, params.tokenizer.train_sample_bytes, sample)),
                                  trainer)
    if not sample.capped:
        # the whole corpus went by: bad splits are known now, before the long encoding pass
        _check_counts(source.source, sample.seen_train, sample.seen_val)
    return tokenizer, sample


def _sample_texts(source: Corpus, cap: int, sample: _Sample) -> Generator[list[str], None, None]:
    """Train-split texts in batches, up to `cap` UTF-8 bytes (0: no cap)."""
    batch, chars = [], 0
    for piece in source.pieces():
        if piece.is_val:
            sample.seen_val += piece.ends_document
            continue
        sample.seen_train += piece.ends_document
        sample.bytes += _utf8_len(piece.text)
        batch.append(piece.text)
        chars += len(piece.text)
        if cap and sample.bytes >= cap:
            sample.capped = True
            break
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    # GPT-2's convention: one end-of-text token serves as bos, eos, unk (never produced by a
    # byte-level BPE) and pad.
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOT, eos_token=EOT,
                                   unk_token=EOT, pad_token=EOT)
    fast.save_pretrained(str(directory))


# --- pass 2: encode ------------------------------------------------------------------------------

@dataclass
class _Batch:
    split: str
    texts: list[str] = field(default_factory=list)
    ends: list[bool] = field(default_factory=list)
    chars: int = 0
    bytes: int = 0


def _batches(source: Corpus) -> Generator[_Batch, None, None]:
    """The pieces of each split, gathered into batches of about CHUNK_CHARS characters."""
    open_batches = {"train": _Batch("train"), "val": _Batch("val")}
    for piece in source.pieces():
        batch = open_batches["val" if piece.is_val else "train"]
        batch.texts.append(piece.text)
        batch.ends.append(piece.ends_document)
        batch.chars += len(piece.text)
        batch.bytes += _utf8_len(piece.text)
        if batch.chars >= CHUNK_CHARS:
            yield batch
            open_batches[batch.split] = _Batch(batch.split)
    yield from (batch for batch in open_batches.values() if batch.texts)


@dataclass
class _Split:
    writer: TokenWriter
    counts: np.ndarray | None = None   # token frequencies, kept for the train split
    documents: int = 0
    bytes: int = 0

    @property
    def tokens(self) -> int:
        return self.writer.count


def _encode(source: Corpus, tokenizer: Tokenizer, directory: Path, dtype: np.dtype) -> dict[str, _Split]:
    vocab_size = tokenizer.get_vocab_size()
    eot = np.array([tokenizer.token_to_id(EOT)], dtype=dtype)
    with TokenWriter(directory / TRAIN_FILE, dtype) as train, TokenWriter(directory / VAL_FILE, dtype) as val:
        splits = {"train": _Split(train, counts=np.zeros(vocab_size, np.int64)), "val": _Split(val)}
        for batch in _read_ahead(_batches(source)):
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


def _read_ahead(items: Generator[T, None, None], depth: int = 2) -> Iterator[T]:
    """Yield from `items`, which a thread produces up to `depth` ahead. Reading the corpus is
    Python and holds the GIL; the tokenizer releases it while it works, so the two overlap."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with closing(items):   # closes the corpus files when the consumer stops early
                for item in items:
                    if not _put(slots, (True, item), stop):
                        return
            _put(slots, (False, None), stop)
        except BaseException as exc:   # handed to the consumer, which raises it
            _put(slots, (False, exc), stop)

    thread = threading.Thread(target=produce, name="tokenize-reader", daemon=True)
    thread.start()
    try:
        while True:
            more, item = slots.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _put(slots: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            slots.put(entry, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


# --- checks and the manifest ---------------------------------------------------------------------

def _check_counts(corpus: str | Path, train_documents: int, val_documents: int) -> None:
    if not train_documents and not val_documents:
        raise PipelineError(f"corpus {corpus} holds no text (every file is empty or blank): "
                            "add documents or point paths.corpus elsewhere")
    for name, count, hint in (("validation", val_documents, "raise"), ("training", train_documents, "lower")):
        if not count:
            raise PipelineError(f"data.val_fraction leaves no {name} documents among the "
                                f"{train_documents + val_documents} of corpus {corpus}: {hint} "
                                "data.val_fraction or add documents")


def _manifest(params: Params, splits: dict[str, _Split], tokenizer: Tokenizer, dtype: np.dtype,
              tok_dir: Path, tokens_dir: Path, source: Corpus) -> TokenManifest:
    train, val = splits["train"], splits["val"]
    tokens = train.tokens + val.tokens
    vocab_size, eot_token_id = tokenizer.get_vocab_size(), tokenizer.token_to_id(EOT)
    return TokenManifest.make(**{
        "train_tokens": train.tokens,
        "val_tokens": val.tokens,
        "documents": {"train": train.documents, "val": val.documents},
        "train_bytes": train.bytes,
        "val_bytes": val.bytes,
        "bytes_per_token": round((train.bytes + val.bytes) / tokens, 6),
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "eot_token_id": eot_token_id,
        "sha256": {name: provenance.file_sha256(tokens_dir / name) for name in (TRAIN_FILE, VAL_FILE)},
        "tokenizer_sha256": provenance.file_sha256(tok_dir / TOKENIZER_FILE),
        "unigram_entropy_nats": round(_entropy(train.counts), 6),
        "invalid_utf8_replacements": source.replacements,
        "skipped_entries": {kind: paths for kind, paths in source.skipped.items() if paths},
        **provenance.record(declared_params("tokenize", params)),
    })


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())



def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


def _print_summary(corpus: Path, manifest: TokenManifest, sample: _Sample, seconds: float) -> None:
    docs = manifest.documents
    print(f"tokenize: {corpus}: {docs['train']:,} train / {docs['val']:,} val documents -> "
          f"{manifest.train_tokens:,} / {manifest.val_tokens:,} tokens, "
          f"{manifest.bytes_per_token:.2f} bytes/token, vocab {manifest.vocab_size:,} "
          f"({manifest.dtype}); BPE trained on {sample.bytes / 1e6:,.1f} MB in {sample.seconds:.1f} s; "
          f"{seconds:.1f} s in all; peak RSS {sample.peak_rss_mb:,.0f} MB after BPE training, "
          f"{_peak_rss_mb():,.0f} MB at the end")
    if manifest.invalid_utf8_replacements:
        print(f"tokenize: warning: {manifest.invalid_utf8_replacements:,} undecodable bytes were "
              "replaced by U+FFFD (data.encoding_errors: strict makes this an error)")
