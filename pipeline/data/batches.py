"""Training and validation windows over memory-mapped token files.

Training order: the train file is cut into non-overlapping windows of `context + 1` tokens
(inputs and their next-token targets) and each epoch visits them in a seeded permutation. Step s
uses the global sequences s*S .. s*S+S-1 (S sequences per optimizer step), and the sequence a
process reads depends only on (seed, step, micro-step, rank): a resumed run sees exactly the
batches of an uninterrupted one, and 2 processes x accumulation a see the very windows of
1 process x accumulation 2a, just dealt differently.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.data.tokens import read_tokens


class TrainWindows:
    def __init__(self, path: str | Path, context: int, seqs_per_step: int, seed: int):
        self.path = Path(path)
        self.tokens = read_tokens(path)
        self.context = context
        self.seqs_per_step = seqs_per_step
        self.seed = seed
        self.windows = (len(self.tokens) - 1) // context
        if self.windows < 1:
            raise PipelineError(f"{path} holds {len(self.tokens)} tokens, fewer than one window of "
                                f"model.context + 1 = {context + 1}: use more text or a smaller model.context")
        self._order = lru_cache(maxsize=2)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.windows)

    def starts(self, step: int, first: int, count: int) -> np.ndarray:
        """Token offsets of sequences first .. first+count-1 of optimizer step `step`."""
        index = step * self.seqs_per_step + first + np.arange(count)
        epoch, slot = np.divmod(index, self.windows)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epoch):
            hit = epoch == e
            out[hit] = self._order(int(e))[slot[hit]]
        return out * self.context

    def batch(self, step: int, micro: int, rank: int, world: int, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each micro_batch x context int64, for one rank's micro-step.

        Micro-steps of all ranks interleave: rank r's micro-step m holds the sequences of
        global micro-batch m*world + r.
        """
        first = (micro * world + rank) * micro_batch
        return stack_windows(self.tokens, self.starts(step, first, micro_batch), self.context)

    def epochs(self, step: int) -> float:
        return step * self.seqs_per_step / self.windows


def val_starts(path: str | Path, context: int, count: int) -> np.ndarray:
    """A fixed subset: `count` windows spread evenly over the file (all of them if it is short)."""
    tokens = read_tokens(path)
    windows = (len(tokens) - 1) // context
    if windows < 1:
        raise PipelineError(f"{path} holds {len(tokens)} tokens, fewer than one window of model.context + 1 = "
                            f"{context + 1}: raise data.val_fraction or lower model.context")
    count = min(count, windows)
    return (np.arange(count, dtype=np.int64) * windows // count) * context


def stack_windows(tokens: np.ndarray, starts: np.ndarray, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([tokens[s:s + context + 1] for s in starts]).astype(np.int64)
    rows = torch.from_numpy(rows)
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
