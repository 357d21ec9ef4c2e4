"""What makes two trainings the same run: the values that shape the weights and the data they
see. A checkpoint of another run is never resumed (it is moved aside), and a run's own measured
speed never prices it (pipeline/cost/calibration.py).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.core.params import Params
from pipeline.data.tokens import TRAIN_FILE, VAL_FILE, TokenManifest

# Train params that shape the weights. Stopping rules (max_steps, patience, ...) and the hardware
# plan may change on resume.
RESUME_KEYS = ("seed", "tokens_per_step", "optimizer", "lr", "min_lr", "warmup_steps", "weight_decay", "beta1",
               "beta2", "grad_clip")
MUON_RESUME_KEYS = ("muon_lr", "muon_momentum", "muon_weight_decay")  # part of a run's identity only with muon


def identity(params: Params, manifest: TokenManifest) -> dict[str, Any]:
    ident = {f"model.{k}": v for k, v in params.section("model").items()}
    keys = RESUME_KEYS + (MUON_RESUME_KEYS if params.train.optimizer == "muon" else ())
    ident |= {f"train.{k}": getattr(params.train, k) for k in keys}
    ident |= {"vocab_size": manifest.vocab_size, "eot_token_id": manifest.eot_token_id,
              "train.bin sha256": manifest.sha256[TRAIN_FILE], "val.bin sha256": manifest.sha256[VAL_FILE],
              "tokenizer sha256": manifest.tokenizer_sha256}
    return ident


def run_id(params: Params, manifest: TokenManifest) -> str:
    """A short digest of the identity: the name a run's measurements are kept under."""
    text = json.dumps(identity(params, manifest), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """How a checkpoint's identity differs from this run's, for the message that moves it aside."""
    return "; ".join(f"{k} was {saved.get(k)!r}, now {now[k]!r}" for k in now if saved.get(k) != now[k])
