"""The byte-level BPE tokenizer: trained on (a capped sample of) the train split, saved as
save_pretrained writes it, with GPT-2's one special token.

    check_vocab(params.tokenizer.vocab_size)
    tokenizer, sample = train(CleanedCorpus(params.paths.clean, params.data.val_fraction), params.tokenizer)
    save(tokenizer, directory)   # tokenizer.json + tokenizer_config.json
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from pipeline.core.errors import PipelineError
from pipeline.core.params import Tokenizer as TokenizerParams
from pipeline.data.cleaned import CleanedCorpus
from pipeline.data.corpus import check_split_documents, utf8_len
from pipeline.data.readahead import read_ahead
from pipeline.data.tokens import dtype_for_vocab

EOT = "<|endoftext|>"
SPECIAL_TOKENS = (EOT,)
BYTE_ALPHABET = 256
BATCH_CHARS = 1_000_000   # characters per batch handed to the BPE trainer


def check_vocab(vocab_size: int) -> None:
    smallest = BYTE_ALPHABET + len(SPECIAL_TOKENS) + 1
    if vocab_size < smallest:
        raise PipelineError(f"tokenizer.vocab_size {vocab_size} leaves no room for merges: it must be "
                            f"at least {smallest} (256 byte tokens + {len(SPECIAL_TOKENS)} special "
                            "+ 1 merge); 4096-50257 is usual")
    dtype_for_vocab(vocab_size)


@dataclass
class Sample:
    """The text the BPE was trained on, and the documents that went by while it was read."""

    bytes: int = 0
    capped: bool = False
    seen_train: int = 0
    seen_val: int = 0


def train(source: CleanedCorpus, settings: TokenizerParams) -> tuple[Tokenizer, Sample]:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size,
        min_frequency=settings.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sample = Sample()
    tokenizer.train_from_iterator(read_ahead(_sample_texts(source, settings.train_sample_bytes, sample)), trainer)
    if not sample.capped:
        # the whole corpus went by: bad splits are known now, before the long encoding pass
        check_split_documents(source.source, sample.seen_train, sample.seen_val)
    return tokenizer, sample


def _sample_texts(source: CleanedCorpus, cap: int, sample: Sample) -> Generator[list[str], None, None]:
    """Train-split texts in batches, up to `cap` UTF-8 bytes (0: no cap)."""
    batch, chars = [], 0
    for piece in source.pieces(progress="tokenize: BPE sample"):
        if piece.is_val:
            sample.seen_val += piece.ends_document
            continue
        sample.seen_train += piece.ends_document
        sample.bytes += utf8_len(piece.text)
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


def save(tokenizer: Tokenizer, directory: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    # GPT-2's convention: one end-of-text token serves as bos, eos, unk (never produced by a
    # byte-level BPE) and pad.
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOT, eos_token=EOT,
                                   unk_token=EOT, pad_token=EOT)
    fast.save_pretrained(str(directory))
