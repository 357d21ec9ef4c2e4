"""Learned calibration: the MFU each train run measured, kept per machine outside the repository
(the same cache as the detected CPU, pipeline/cost/cpuinfo.py), so the next estimate of the same run
shape on the same device uses a measurement instead of the catalog's assumption.

    calibration.remember(plan.calibration_key, run="3f2a...", mfu=0.41, wall_over_steps=1.12, ...)
    calibration.recall(plan.calibration_key, not_run="3f2a...")   # -> Learned | None

A key (pipeline/cost/planner.py: key_for, written into the plan) holds the device, with its
detected fingerprint for a CPU, and everything the speed of a step depends on: architecture and
shape, vocabulary, optimizer, precision, micro-batch, activation checkpointing. Under a key each
run (pipeline/engine/identity.py) keeps its own measurement, and an estimate never recalls the
one of the run it prices: held against its own measurement, a run would look perfectly
predicted.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.atomic import write_json
from pipeline.core.cache import cache_dir

FILE_NAME = "calibration.json"
MIN_STEP_SECONDS = 1.0  # a run shorter than this measured noise, not a rate
RUNS_PER_KEY = 8        # the newest runs' measurements kept under one key


@dataclass(frozen=True)
class Learned:
    mfu: float                 # model FLOPs utilization of the optimizer steps (compute.mfu)
    wall_over_steps: float     # the run's wall time over its step time: validation, checkpoints, start
    tokens_per_second: float
    measured_at: str
    # the mean time one checkpoint took to write (the Young/Daly checkpoint cost); None from a run
    # that wrote none, or from a version that did not measure it
    checkpoint_seconds: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def path() -> Path:
    return cache_dir() / FILE_NAME


def recall(key: str, *, not_run: str) -> Learned | None:
    """The newest measurement under `key` by a run other than `not_run`."""
    runs = _read().get(key)
    if not isinstance(runs, dict):
        return None
    others = [entry for run, entry in runs.items() if run != not_run and isinstance(entry, dict)]
    try:
        return max((Learned(**entry) for entry in others), key=lambda e: e.measured_at, default=None)
    except TypeError:  # written by another version: measure again
        return None


def remember(key: str, *, run: str, mfu: float, wall_over_steps: float, tokens_per_second: float,
             step_seconds: float, checkpoint_seconds: float | None = None) -> bool:
    """Store a run's measurement; False (nothing stored) when the run was too short to trust or
    the cache cannot be written (the estimate then keeps the catalog's assumption)."""
    if step_seconds < MIN_STEP_SECONDS or not 0 < mfu <= 1:
        return False
    entries = _read()
    runs = entries.get(key) if isinstance(entries.get(key), dict) and "mfu" not in entries[key] else {}
    runs.pop(run, None)
    runs[run] = Learned(mfu=mfu, wall_over_steps=wall_over_steps, tokens_per_second=tokens_per_second,
                        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        checkpoint_seconds=checkpoint_seconds).as_dict()
    entries[key] = dict(list(runs.items())[-RUNS_PER_KEY:])
    try:
        write_json(path(), entries)
    except OSError:
        return False
    return True


def _read() -> dict:
    try:
        data = json.loads(path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
