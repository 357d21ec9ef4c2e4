"""The finished runs a loss forecast learns from: each run that ended on its schedule, kept by the
evaluate stage under its corpus, architecture, depth and context (`law_key`) in the per-machine
cache (forecast_runs.json, beside pilots.json), and fitted to by later forecasts of that corpus
(pipeline/cost/forecast.py). Apart from the forecast, so that evaluate records a run without
depending on the estimate's pricing code.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.core.atomic import write_json
from pipeline.core.cache import cache_dir
from pipeline.core.params import Params
from pipeline.data.tokens import TokenManifest

RUNS_FILE = "forecast_runs.json"
RUNS_PER_KEY = 16


def law_key(params: Params, manifest: TokenManifest) -> str:
    """What the law's constants depend on besides N and D: the corpus, the architecture at its depth
    and context, the recipe's optimizer."""
    model = params.model
    text = json.dumps({"tokens": manifest.sha256, "tokenizer": manifest.tokenizer_sha256,
                       "architecture": model.architecture, "n_layer": model.n_layer, "context": model.context,
                       "head_dim": model.n_embd // model.n_head, "tie": model.tie_embeddings,
                       "activation": model.mlp_activation, "optimizer": params.train.optimizer,
                       "eval_batches": params.train.eval_batches}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def recorded_runs(key: str) -> dict[str, dict[str, Any]]:
    runs = _read_runs().get(key)
    return runs if isinstance(runs, dict) else {}


def remember_run(key: str, run: str, *, parameters: int, tokens: int, unique_tokens: int, val_loss: float) -> bool:
    """Keep a finished run's final validation loss for later forecasts of the same corpus; False
    where the cache cannot be written."""
    entries = _read_runs()
    runs = recorded_runs(key)
    runs.pop(run, None)
    runs[run] = {"parameters": parameters, "tokens": tokens, "unique_tokens": unique_tokens, "val_loss": val_loss}
    entries[key] = dict(list(runs.items())[-RUNS_PER_KEY:])
    try:
        write_json(cache_dir() / RUNS_FILE, entries)
    except OSError:
        return False
    return True


def _read_runs() -> dict:
    try:
        data = json.loads((cache_dir() / RUNS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
