"""Scoring a model on the WHOLE val split: next-token cross-entropy over every val token once,
the train unigram baseline it should beat, and the kept checkpoints scored the same way.

    stream = scored_stream(tokens_dir, manifest)
    final = score(net, stream, params.model.context, params.evaluate.batch_size, device, manifest["val_bytes"])
    final.as_dict()   # {"val_loss": ..., "perplexity": ..., "bits_per_byte": ...}
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from pipeline.core.errors import PipelineError
from pipeline.data.tokens import MANIFEST_FILE, TRAIN_FILE, VAL_FILE, read_tokens
from pipeline.engine import checkpoint
from pipeline.evaluation.loading import load_model, weights_fingerprint

_UNIGRAM_CHUNK = 1 << 24


@dataclass(frozen=True)
class Score:
    """Next-token cross-entropy summed over a token stream."""

    nats: float
    tokens: int
    val_bytes: int

    def as_dict(self) -> dict[str, float | int]:
        loss = self.nats / self.tokens
        return {"val_loss": loss, "perplexity": math.exp(loss),
                "bits_per_byte": self.nats / math.log(2) / self.val_bytes}


def scored_stream(tokens_dir: Path, manifest: dict[str, Any]) -> np.ndarray:
    """val.bin with an end-of-text token in front unless it already starts with one.

    The model reads documents that begin after an end-of-text token, so that token is the context
    for the first val token: every val token is then predicted exactly once.
    """
    path = tokens_dir / VAL_FILE
    ids = read_tokens(path)
    if len(ids) != manifest["val_tokens"]:
        raise PipelineError(f"{path} holds {len(ids)} tokens but {tokens_dir / MANIFEST_FILE} says "
                            f"{manifest['val_tokens']}: rerun the tokenize stage")
    eot = manifest["eot_token_id"]
    stream = np.asarray(ids, dtype=np.int64)
    if len(stream) == 0 or stream[0] != eot:
        stream = np.concatenate([[eot], stream])
    if len(stream) < 2 or manifest["val_bytes"] <= 0:
        raise PipelineError(f"the val split {path} is empty: raise data.val_fraction or add documents, "
                            "then rerun the tokenize stage")
    return stream


@torch.inference_mode()
def score(net: PreTrainedModel, stream: np.ndarray, context: int, batch_size: int,
          device: torch.device, val_bytes: int) -> Score:
    """Sum of -log p(stream[i+1] | window) over non-overlapping windows of `context` predictions.

    Windows start every `context` tokens; the tail is one last, shorter window, so every token after
    the first is scored once. Sums are float64 in a fixed order: the same model gives the same bits.
    """
    n = len(stream) - 1
    starts = list(range(0, n - context + 1, context))
    tail = n - len(starts) * context
    total = 0.0
    for i in range(0, len(starts), batch_size):
        total += _window_nats(net, stream, starts[i:i + batch_size], context, device)
    if tail:
        total += _window_nats(net, stream, [len(starts) * context], tail, device)
    return Score(nats=total, tokens=n, val_bytes=val_bytes)


def _window_nats(net, stream: np.ndarray, starts: list[int], length: int, device: torch.device) -> float:
    rows = np.stack([stream[s:s + length + 1] for s in starts])
    batch = torch.from_numpy(rows).to(device)
    inputs = batch[:, :-1]
    logits = net(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits.float()
    nll = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
    return float(nll.double().sum())


def unigram_baseline(tokens_dir: Path, manifest: dict[str, Any], stream: np.ndarray) -> Score:
    """Cross-entropy of the scored val tokens under the train unigram distribution (add-one smoothed)."""
    train = read_tokens(tokens_dir / TRAIN_FILE)
    vocab = max(manifest["vocab_size"], int(stream.max()) + 1)
    counts = np.ones(vocab, dtype=np.float64)
    for i in range(0, len(train), _UNIGRAM_CHUNK):
        counts += np.bincount(train[i:i + _UNIGRAM_CHUNK], minlength=vocab)[:vocab]
    log_p = np.log(counts) - np.log(counts.sum())
    return Score(nats=float(-log_p[stream[1:]].sum()), tokens=len(stream) - 1,
                 val_bytes=manifest["val_bytes"])


# ---- checkpoints -------------------------------------------------------------------------------

def select_checkpoints(manifest: dict[str, Any] | None, which: str) -> list[dict[str, Any]]:
    """The entries of the checkpoint index that evaluate.checkpoints asks for."""
    if manifest is None or which == "none":
        return []
    entries = manifest.get("checkpoints") or []
    if which == "all":
        return entries
    wanted = {manifest.get("best"), manifest.get("latest")}
    return [e for e in entries if e["dir"] in wanted]


def evaluate_checkpoints(ckpt_dir: Path, entries: list[dict[str, Any]], device: torch.device,
                         scorer: Callable[[PreTrainedModel], Score],
                         known: dict[str, tuple[str, Score]]) -> dict[str, dict[str, Any]]:
    """Whole-split quality of each checkpoint entry, keyed by its directory name, ascending by step.

    `known` maps a weights fingerprint to an already scored model (name, score). A checkpoint with
    the same weights reuses that score (the final model is usually the latest checkpoint), and
    `same_weights_as` names it.
    """
    results: dict[str, dict[str, Any]] = {}
    for entry in entries:
        path = ckpt_dir / entry["dir"]
        if not path.is_dir():
            raise PipelineError(f"{ckpt_dir / checkpoint.MANIFEST} lists {entry['dir']} but {path} is missing: "
                                "rerun the train stage, or set evaluate.checkpoints=none")
        try:
            checkpoint.verify(path)
        except checkpoint.CorruptCheckpoint as exc:
            raise PipelineError(f"checkpoint {path} is corrupt ({exc}): delete it and rerun the train stage, "
                                "or set evaluate.checkpoints=none") from None
        net = load_model(path, device)
        fp = weights_fingerprint(net)
        twin = known[fp][0] if fp in known else None
        if twin is None:
            known[fp] = (entry["dir"], scorer(net))
        del net
        results[entry["dir"]] = {
            "step": entry["step"], "tokens": entry.get("tokens"),
            **known[fp][1].as_dict(),
            "train_val_loss": entry.get("val_loss"),
            "same_weights_as": twin,
        }
    return results
