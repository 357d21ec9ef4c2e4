"""What the train stage shows while it runs: the progress bar and the DVCLive metrics (the numbers
themselves are measured by pipeline/engine/meter.py). Only the main process writes; the others keep quiet.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from dvclive import Live
from tqdm.auto import tqdm

from pipeline.core.params import Train


class TrainLog:
    """tqdm on the terminal; DVCLive .tsv files per metric (reports/train_live/plots/metrics)."""

    def __init__(self, directory: Path, main: bool, cfg: Train, start_step: int):
        self.cfg = cfg
        self.live = Live(dir=str(directory), dvcyaml=None, save_dvc_exp=False, report=None) if main else None
        self.bar = tqdm(total=cfg.max_steps, initial=start_step, unit="step", disable=not main, file=sys.stderr,
                        dynamic_ncols=True, mininterval=1 if sys.stderr.isatty() else 30)

    def replay(self, history: dict[str, list[dict[str, Any]]]) -> None:
        """A resumed run's curves start at step 1, as the uninterrupted run's would."""
        for entry in history["train"]:
            self._train_metrics(entry)
        for entry in history["val"]:
            self._val_metrics(entry)

    def train(self, entry: dict[str, Any], tokens_per_second: float) -> None:
        self._train_metrics(entry)
        if self.live:
            self.live.log_metric("train/tokens_per_second", tokens_per_second)
        self.bar.update(1)
        if entry["step"] % self.cfg.log_every == 0:
            loss = f"{entry['loss']:.4f}" if entry["loss"] is not None else "nan"
            self.bar.set_postfix_str(f"loss {loss} lr {entry['lr']:.2e} {tokens_per_second:,.0f} tok/s", refresh=False)

    def val(self, entry: dict[str, Any]) -> None:
        self._val_metrics(entry)
        if self.live:
            self.live.make_summary()
            text = "not finite" if entry["loss"] is None else \
                f"{entry['loss']:.4f} (perplexity {entry['perplexity'] or math.inf:.4g})"
            self.bar.write(f"step {entry['step']}: val loss {text}")

    def note(self, text: str) -> None:
        if self.live:
            self.bar.write(text)

    def done(self, reason: str) -> None:
        if self.live:
            self.bar.write(f"stopped: {reason}")

    def close(self) -> None:
        self.bar.close()
        if self.live:
            self.live.make_summary()

    def _train_metrics(self, entry: dict[str, Any]) -> None:
        if self.live:
            self.live.step = entry["step"]
            for key in ("loss", "lr", "grad_norm"):
                if _finite(entry[key]):
                    self.live.log_metric(f"train/{key}", entry[key])

    def _val_metrics(self, entry: dict[str, Any]) -> None:
        # a diverged run's losses can be huge or infinite: log what is finite, never crash on it
        if self.live:
            self.live.step = entry["step"]
            for key, name in (("loss", "val/loss"), ("perplexity", "val/perplexity")):
                if _finite(entry.get(key)):
                    self.live.log_metric(name, entry[key])


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
