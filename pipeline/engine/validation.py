"""The validation loss: mean next-token cross-entropy over a fixed subset of val.bin's windows.

The subset depends on its size alone (pipeline.data.batches.val_starts), never on the micro-batch
or the number of processes, so losses stay comparable across a resume on other hardware, which
early stopping relies on. Under DDP each process scores its share and `reduce` sums them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.data.batches import stack_windows, val_starts
from pipeline.data.tokens import read_tokens
from pipeline.engine.step import autocast
from pipeline.engine.training import to_device


class Validation:
    def __init__(self, val_file: Path, context: int, windows: int, micro_batch_size: int, *, rank: int = 0,
                 world: int = 1):
        self.tokens = read_tokens(val_file)
        self.mine = val_starts(val_file, context, windows)[rank::world]
        self.context, self.micro_batch_size = context, micro_batch_size

    def loss(self, model: torch.nn.Module, device: torch.device, precision: str,
             reduce: Callable[[torch.Tensor], torch.Tensor] = lambda sums: sums) -> float:
        """The mean loss of `model` (left in training mode) over the subset, in `precision`."""
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, tokens
        with torch.no_grad():
            for i in range(0, len(self.mine), self.micro_batch_size):
                x, y = stack_windows(self.tokens, self.mine[i:i + self.micro_batch_size], self.context)
                x, y = to_device(x, device), to_device(y, device)
                with autocast(device.type, precision):
                    logits = model(input_ids=x, use_cache=False).logits
                    total[0] += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").double()
                total[1] += y.numel()
                del logits, x, y  # freed before the next batch's forward, not after it: a lower peak
        model.train()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # validation's activations are shaped unlike training's
        loss_sum, count = reduce(total).tolist()
        return loss_sum / count
