"""The tokenize stage: cleaned corpus -> byte-level BPE tokenizer + train/val token files + manifest.

    python -m pipeline tokenize --params params.yaml [--params params/demo.yaml]

Two streaming passes over the cleaned corpus (pipeline/data/cleaned.py, the clean stage's output): the first trains the BPE on (a capped sample of) the train
split (pipeline/data/bpe.py), the second encodes both splits into the token files
(pipeline/data/encode.py). Both output directories appear whole, together, or not at all.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from pipeline.core import provenance
from pipeline.core.atomic import staging_dir
from pipeline.core.params import Params
from pipeline.data import bpe
from pipeline.data.cleaned import CleanedCorpus
from pipeline.data.corpus import check_split_documents
from pipeline.data.encode import Split, encode_splits, unigram_entropy
from pipeline.data.tokens import MANIFEST_FILE, TOKENIZER_FILE, TRAIN_FILE, VAL_FILE, TokenManifest, dtype_for_vocab
from pipeline.registry import declared_params


def run(params: Params, *, clean: Path, tokenizer: Path, tokens: Path) -> TokenManifest:
    """Train the tokenizer on the cleaned corpus `clean` and write it to `tokenizer`; encode into `tokens`."""
    corpus, tokenizer_dir, tokens_dir = Path(clean), Path(tokenizer), Path(tokens)
    bpe.check_vocab(params.tokenizer.vocab_size)
    source = CleanedCorpus(corpus, params.data.val_fraction)
    started = time.perf_counter()

    tokenizer, sample = bpe.train(source, params.tokenizer)
    bpe_seconds, bpe_rss_mb = time.perf_counter() - started, _peak_rss_mb()
    with (staging_dir(tokenizer_dir, marker=TOKENIZER_FILE) as tok_stage,
          staging_dir(tokens_dir, marker=MANIFEST_FILE) as tokens_stage):
        bpe.save(tokenizer, tok_stage)
        # text that happens to spell "<|endoftext|>" is text, not a document boundary
        tokenizer.encode_special_tokens = True
        dtype = dtype_for_vocab(tokenizer.get_vocab_size())
        splits = encode_splits(source, tokenizer, tokens_stage, dtype)
        check_split_documents(corpus, splits["train"].documents, splits["val"].documents)
        manifest = _manifest(params, splits, tokenizer, dtype, tok_stage, tokens_stage, source)
        manifest.write(tokens_stage / MANIFEST_FILE)
    docs = manifest.documents
    print(f"tokenize: {corpus}: {docs['train']:,} train / {docs['val']:,} val documents -> "
          f"{manifest.train_tokens:,} / {manifest.val_tokens:,} tokens, "
          f"{manifest.bytes_per_token:.2f} bytes/token, vocab {manifest.vocab_size:,} "
          f"({manifest.dtype}); BPE trained on {sample.bytes / 1e6:,.1f} MB in {bpe_seconds:.1f} s; "
          f"{time.perf_counter() - started:.1f} s in all; peak RSS {bpe_rss_mb:,.0f} MB after BPE training, "
          f"{_peak_rss_mb():,.0f} MB at the end")
    if manifest.invalid_utf8_replacements:
        print(f"tokenize: warning: {manifest.invalid_utf8_replacements:,} undecodable bytes were "
              "replaced by U+FFFD (data.encoding_errors: strict makes this an error)")
    return manifest


def _manifest(params: Params, splits: dict[str, Split], tokenizer: Tokenizer, dtype: np.dtype,
              tok_dir: Path, tokens_dir: Path, source: CleanedCorpus) -> TokenManifest:
    train, val = splits["train"], splits["val"]
    tokens = train.tokens + val.tokens
    return TokenManifest.make(**{
        "train_tokens": train.tokens,
        "val_tokens": val.tokens,
        "documents": {"train": train.documents, "val": val.documents},
        "train_bytes": train.bytes,
        "val_bytes": val.bytes,
        "bytes_per_token": round((train.bytes + val.bytes) / tokens, 6),
        "vocab_size": tokenizer.get_vocab_size(),
        "dtype": dtype.name,
        "eot_token_id": tokenizer.token_to_id(bpe.EOT),
        "sha256": {name: provenance.file_sha256(tokens_dir / name) for name in (TRAIN_FILE, VAL_FILE)},
        "tokenizer_sha256": provenance.file_sha256(tok_dir / TOKENIZER_FILE),
        "unigram_entropy_nats": round(unigram_entropy(train.counts), 6),
        "invalid_utf8_replacements": source.replacements,
        "skipped_entries": {kind: paths for kind, paths in source.skipped.items() if paths},
        **provenance.record(declared_params("tokenize", params)),
    })


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB
