"""Where a run is, in numbers: its step, the hours before this process, the loss history, the best
validation and the validations since it improved, the skipped-step counts. The stop rules
(pipeline/engine/stopping.py) judge it; a checkpoint's meta.json and history.json hold it, and a
resumed run reads it back from them (`Progress.resumed`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.engine.stopping import perplexity


@dataclass
class Progress:
    step: int = 0
    earlier_hours: float = 0.0          # spent by the runs this one resumed
    history: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"train": [], "val": []})
    best_val: float = math.inf
    bad_evals: int = 0                  # validations since the best one
    counts: dict[str, int] = field(default_factory=lambda: {"nonfinite_steps_skipped": 0,
                                                            "overflow_steps_skipped": 0})
    last_eval_step: int = -1

    @classmethod
    def resumed(cls, meta: dict[str, Any], history: dict[str, Any]) -> Progress:
        """The progress a checkpoint holds (its meta.json and history.json)."""
        step = meta["step"]
        return cls(step=step, earlier_hours=meta["train_hours"], history=history,
                   best_val=meta["best_val_loss"] if meta["best_val_loss"] is not None else math.inf,
                   bad_evals=meta["bad_evals"], counts=meta["counts"],
                   last_eval_step=step if meta["val_loss"] is not None else -1)

    def meta(self, tokens_per_step: int, hours: float) -> dict[str, Any]:
        """What a checkpoint of this step records of the run's progress in meta.json."""
        return {"step": self.step, "tokens": self.step * tokens_per_step,
                "val_loss": self.last_val if self.last_eval_step == self.step else None,
                "train_hours": hours, "best_val_loss": json_float(self.best_val), "bad_evals": self.bad_evals,
                "counts": self.counts}

    @property
    def last_val(self) -> float | None:
        """The latest validation loss (None before the first, or when it was not finite)."""
        return self.history["val"][-1]["loss"] if self.history["val"] else None

    def record_train(self, loss: float, lr: float, grad_norm: float | None) -> dict[str, Any]:
        """A step done: count it and add its entry to the history."""
        self.step += 1
        entry = {"step": self.step, "loss": json_float(loss), "lr": lr, "grad_norm": json_float(grad_norm)}
        self.history["train"].append(entry)
        return entry

    def record_val(self, loss: float) -> dict[str, Any]:
        """A validation of this step: add its entry to the history."""
        self.last_eval_step = self.step
        entry = {"step": self.step, "loss": json_float(loss), "perplexity": json_float(perplexity(loss))}
        self.history["val"].append(entry)
        return entry

    def judge_val(self, loss: float, improved: bool) -> None:
        """Early stopping's count: a new best resets it, anything else adds one."""
        if improved:
            self.best_val, self.bad_evals = loss, 0
        else:
            self.bad_evals += 1

    def loss_summary(self) -> dict[str, Any]:
        """The train report's loss block: first, last and lowest train loss, the validations, the best."""
        losses = [e["loss"] for e in self.history["train"] if e["loss"] is not None]
        return {"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                "min": min(losses) if losses else None, "val": self.history["val"],
                "best_val": json_float(self.best_val)}


def json_float(x: float | None) -> float | None:
    """JSON has no NaN or infinity: a non-finite value is recorded as null."""
    return x if x is not None and math.isfinite(x) else None
