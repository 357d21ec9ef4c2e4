"""Complete records with test values, for tests that plant a stage's output instead of running it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.cost.report import CostReport
from pipeline.data.tokens import TokenManifest
from pipeline.engine.report import TrainReport

_PROVENANCE = {"params": {}, "versions": {}, "git_revision": None}


def manifest(path: Path, **fields: Any) -> TokenManifest:
    values = {"train_tokens": 0, "val_tokens": 0, "documents": {"train": 1, "val": 1}, "train_bytes": 0,
              "val_bytes": 0, "bytes_per_token": 3.0, "vocab_size": 0, "dtype": "uint16", "eot_token_id": 0,
              "sha256": {"train.bin": "-", "val.bin": "-"}, "tokenizer_sha256": "-", "unigram_entropy_nats": 1.0,
              "invalid_utf8_replacements": 0, **_PROVENANCE}
    record = TokenManifest.make(**(values | fields))
    record.write(path)
    return record


def cost(path: Path, **fields: Any) -> CostReport:
    values = {"device": "cpu", "device_description": "a CPU", "num_devices": 1, "pricing": "on_demand",
              "fits": True, "within_budget": True, "override": False, "override_budget": False, "over_budget": [], "budget": {"usd": 10.0},
              "budget_tolerance": 0.1,
              "tokens": 8192, "steps": 8, "tokens_per_step": 1024, "train_tokens_available": 8192, "epochs": 1.0,
              "parameters": 1000, "flops_per_token": 1e8, "flops": 1e12, "executed_flops": 1e12, "eval_flops": 0.0,
              "hours": 2.0, "step_hours": 2.0, "tokens_per_second": 8192 / 7200, "usd": 4.0, "usd_per_hour": 2.0,
              "usd_basis": "on_demand: $2/device-hour", "kwh": 0.5, "co2_kg": 0.2, "peak_flops": 1e12,
              "recompute_factor": 1.0, "mfu": 0.3, "mfu_source": "test", "peak_memory_bytes": 2**30,
              "memory_usable_bytes": 2**31, "memory": {}, "plan": {}, "sources": {}, "detected": None,
              "provenance": _PROVENANCE}
    record = CostReport.make(**(values | fields))
    record.write(path)
    return record


def train(path: Path, **fields: Any) -> TrainReport:
    values = {"steps": 4, "tokens": 4096, "epochs": 0.5, "stop_reason": "max_steps", "resumed_from": None,
              "final_weights": "step-000004", "wall_hours": 1.5, "tokens_per_second": 0.75, "this_run_hours": 1.5,
              "seconds": {}, "mfu": 0.25, "mfu_device": "cpu", "flops_per_token": 1e8, "peak_memory_bytes": 2**29,
              "peak_memory_kind": "process_peak_rss", "kwh": None, "kwh_source": None, "precision": "fp32",
              "device": "cpu", "parameters": 12345, "world": 1, "micro_batch_size": 1, "grad_accum_steps": 1,
              "activation_checkpointing": False, "compile": False, "settings_from": "test", "loss": {},
              "nonfinite_steps_skipped": 0, "overflow_steps_skipped": 0, "checkpoints": None, **_PROVENANCE}
    record = TrainReport.make(**(values | fields))
    record.write(path)
    return record
