"""When a run stops, and when it has diverged: rules over numbers, without torch.

`stop_reason`, asked before every step, in this order: train.max_steps, train.max_tokens,
train.target_val_loss, train.target_perplexity, early stopping (train.patience validations that
did not improve on the best by more than train.min_delta: `improves`), train.max_hours, and the
budget guard's projection (pipeline/cost/budget.py).

`DivergenceWatch`: the training loss non-finite train.max_nonfinite_steps steps in a row, above
ABSURD_LOSS_FACTOR x ln(vocab), or over train.loss_spike_factor x the median of the last
SPIKE_WINDOW losses; a validation loss non-finite, absurd, or over VAL_DIVERGENCE_FACTOR x the
best so far. Each returns a Divergence whose message says what to change; the run then stops
without checkpointing the suspect weights (TrainingDiverged).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.core.errors import PipelineError
from pipeline.core.params import Train

# Train losses whose median judges a spike: long enough to ride out batch-to-batch noise.
SPIKE_WINDOW = 20
# Fewer finite losses than this in the window judge no spike: the first steps' losses fall fast.
SPIKE_MIN_HISTORY = 5
# A model that predicts uniformly scores ln(vocab); a loss this far above it is a model that is
# confidently wrong about everything: it diverged, whatever its history.
ABSURD_LOSS_FACTOR = 1.5
# A validation this many times the best one so far: the weights left the basin they were in.
VAL_DIVERGENCE_FACTOR = 1.5


class TrainingDiverged(PipelineError):
    """Non-finite, absurd or spiking loss: stopped without saving the suspect weights."""


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def stop_reason(train: Train, *, step: int, last_val: float | None, bad_evals: int, time_up: bool,
                over_budget: bool) -> str | None:
    """Why the run stops before step `step` + 1 (the train report's stop_reason), or None to go on.
    last_val: the latest validation loss; time_up, over_budget: as every process agreed."""
    if step >= train.max_steps:
        return "max_steps"
    if train.max_tokens and step * train.tokens_per_step >= train.max_tokens:
        return "max_tokens"
    if last_val is not None and train.target_val_loss and last_val <= train.target_val_loss:
        return "target_val_loss"
    if last_val is not None and train.target_perplexity and perplexity(last_val) <= train.target_perplexity:
        return "target_perplexity"
    if bad_evals >= train.patience:
        return "early_stopping"
    if time_up:
        return "max_hours"
    if over_budget:
        return "over_budget"
    return None


def improves(loss: float, best: float, min_delta: float) -> bool:
    """Whether a validation loss is a new best for early stopping: below the best by more than min_delta."""
    return loss < best - min_delta


@dataclass(frozen=True)
class Divergence:
    reason: str     # the train report's stop_reason
    what: str       # what the loss did, and at which step

    def message(self, train: Train, newest_kept: Path | None, previous_runs: Path) -> str:
        """The error the run stops with: what happened, what is kept, what to change."""
        keep = (f"the checkpoints before it are intact (newest {newest_kept})" if newest_kept
                else "no checkpoint was written yet")
        return (f"training diverged: {self.what}; {keep}. Lower train.lr (it is {train.lr:g}) or raise "
                f"train.warmup_steps (it is {train.warmup_steps}): that starts a new run, and the old "
                f"checkpoints move to {previous_runs}. With train.precision fp16, a rerun in fp32 "
                "or bf16 resumes from the last good checkpoint")


class DivergenceWatch:
    def __init__(self, train: Train, vocab: int):
        self.train, self.vocab = train, vocab
        self.absurd_loss = ABSURD_LOSS_FACTOR * math.log(vocab)
        self.nonfinite_in_row = 0

    def train_loss(self, loss: float, step: int, history: Sequence[dict[str, Any]]) -> Divergence | None:
        """Judge step `step`'s training loss against the history entries of the steps before it
        (the median of the recent ones, so one earlier bad step does not hide the next)."""
        if not math.isfinite(loss):
            self.nonfinite_in_row += 1
            if self.nonfinite_in_row >= self.train.max_nonfinite_steps:
                return Divergence("nonfinite_loss", f"the training loss was non-finite for {self.nonfinite_in_row} "
                                                    f"steps in a row (step {step})")
            return None
        self.nonfinite_in_row = 0
        recent = [e["loss"] for e in history[-SPIKE_WINDOW:] if e["loss"] is not None]
        if len(recent) >= SPIKE_MIN_HISTORY:
            baseline = statistics.median(recent)
            if loss > self.train.loss_spike_factor * baseline:
                return Divergence("loss_spike", f"the training loss jumped to {loss:.3f} at step {step}, over "
                                                f"train.loss_spike_factor={self.train.loss_spike_factor} x the median "
                                                f"{baseline:.3f} of the last {len(recent)} steps")
        if loss > self.absurd_loss:
            return Divergence("loss_absurd", f"the training loss reached {loss:.3f} at step {step}, above "
                                             f"{ABSURD_LOSS_FACTOR} x ln(vocab {self.vocab}) = {self.absurd_loss:.2f}, "
                                             "worse than guessing uniformly")
        return None

    def val_loss(self, loss: float, step: int, best: float) -> Divergence | None:
        """Judge a validation loss against the best one before it."""
        if not math.isfinite(loss) or loss > self.absurd_loss:
            return Divergence("val_loss_absurd", f"the validation loss was {loss:.4g} at step {step}, above "
                                                 f"{ABSURD_LOSS_FACTOR} x ln(vocab) = {self.absurd_loss:.2f}")
        if math.isfinite(best) and loss > VAL_DIVERGENCE_FACTOR * best:
            return Divergence("val_loss_diverged", f"the validation loss rose to {loss:.4f} at step {step}, over "
                                                   f"{VAL_DIVERGENCE_FACTOR} x the best so far ({best:.4f})")
        return None
