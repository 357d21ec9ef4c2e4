"""Bits per byte on reference texts the user supplies (evaluate.reference_texts), scored exactly as
the val split is: a number that compares across corpora and tokenizers, and with published models
scored on the same text (FLORES+ devtest, say).

    texts = read_texts(tok, params.paths.eval_data, params.evaluate.reference_texts, eot)  # before the model loads
    score_texts(net, texts, params.model.context, params.evaluate.batch_size, device)

Each file is one document: its UTF-8 text, whole (FLORES+: its sentences, one per line, in
order), with an end-of-text token in front as every val document has. Windows of model.context
tokens with a stride of model.context (non-overlapping, as val and as lm-eval's
loglikelihood_rolling): every token is predicted once, from at most model.context - 1 before it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from pipeline.core.errors import PipelineError
from pipeline.evaluation.scoring import score


@dataclass(frozen=True)
class ReferenceText:
    name: str
    path: Path
    stream: np.ndarray   # end-of-text, then the text's ids
    n_bytes: int


def read_texts(tok, eval_data: Path, named: dict[str, Path], eot: int) -> list[ReferenceText]:
    """Every named text read and encoded: a missing, unreadable or empty one fails here, in a second."""
    texts = []
    for name, relative in named.items():
        path = eval_data / relative
        key = f"evaluate.reference_texts.{name}"
        if not path.is_file():
            raise PipelineError(f"{key}: {path} not found: put the text there (paths.eval_data is {eval_data}) "
                                "or remove the entry")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PipelineError(f"{key}: {path} is not UTF-8 (byte {exc.start}): convert it, "
                                "e.g. iconv -t UTF-8") from None
        ids = tok(text, add_special_tokens=False)["input_ids"] if text else []
        if not ids:
            raise PipelineError(f"{key}: {path} is empty: give it some text or remove the entry")
        texts.append(ReferenceText(name, path, np.asarray([eot, *ids], dtype=np.int64), len(text.encode("utf-8"))))
    return texts


def score_texts(net: PreTrainedModel, texts: list[ReferenceText], context: int, batch_size: int,
                device: torch.device) -> dict[str, dict[str, Any]]:
    results = {}
    for text in texts:
        s = score(net, text.stream, context, batch_size, device, text.n_bytes)
        results[text.name] = {"file": str(text.path), "bytes": text.n_bytes, "tokens": s.tokens,
                              "loss": s.nats / s.tokens, "bits_per_byte": s.nats / math.log(2) / text.n_bytes}
    return results
