"""Learned calibration: the MFU each train run measured, kept per machine outside the repository
(the same cache as the detected CPU, pipeline/cpuinfo.py), so the next estimate of the same run
shape on the same device uses a measurement instead of the catalog's assumption.

    key = calibration.key_for(device, params.model, vocab, plan, params.train.optimizer)
    calibration.remember(key, mfu=0.41, wall_over_steps=1.12, tokens_per_second=2300.0)
    calibration.recall(key)   # -> Learned | None

A key holds the device (with its detected fingerprint, for a CPU) and everything the speed of a
step depends on: architecture and shape, vocabulary, optimizer, precision, micro-batch,
activation checkpointing.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.cpuinfo import cache_dir
from pipeline.hardware import Device
from pipeline.params import Model

FILE_NAME = "calibration.json"
MIN_STEP_SECONDS = 1.0  # a run shorter than this measured noise, not a rate


@dataclass(frozen=True)
class Learned:
    mfu: float                 # model FLOPs utilization of the optimizer steps (compute.mfu)
    wall_over_steps: float     # the run's wall time over its step time: validation, checkpoints, start
    tokens_per_second: float
    measured_at: str

    def as_dict(self) -> dict:
        return asdict(self)


def key_for(device: Device, model: Model, vocab_size: int, plan, optimizer: str) -> str:
    machine = device.name + (f"@{device.detected['fingerprint']}" if device.detected else "")
    shape = (f"{model.architecture}:L{model.n_layer}xD{model.n_embd}xH{model.n_head}xT{model.context}xV{vocab_size}"
             f"/{optimizer}")
    layout = (f"{plan.precision}/mb{plan.micro_batch_size}x{plan.grad_accum_steps}"
              f"{'/ckpt' if plan.activation_checkpointing else ''}")
    return f"{machine}|{shape}|{layout}"


def path() -> Path:
    return cache_dir() / FILE_NAME


def recall(key: str) -> Learned | None:
    entry = _read().get(key)
    try:
        return Learned(**entry) if entry else None
    except TypeError:  # written by another version: measure again
        return None


def remember(key: str, *, mfu: float, wall_over_steps: float, tokens_per_second: float, step_seconds: float) -> bool:
    """Store a run's measurement; False (nothing stored) when the run was too short to trust or
    the cache cannot be written (the estimate then keeps the catalog's assumption)."""
    if step_seconds < MIN_STEP_SECONDS or not 0 < mfu <= 1:
        return False
    entries = _read()
    entries[key] = Learned(mfu=mfu, wall_over_steps=wall_over_steps, tokens_per_second=tokens_per_second,
                           measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())).as_dict()
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
