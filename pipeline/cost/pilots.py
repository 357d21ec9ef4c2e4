"""Pilot trainings (cost.forecast): a grid of short runs of the configured recipe on the user's
own tokens and device, whose final validation losses the scaling law is fitted to
(pipeline/cost/forecast.py).

    grid = pilots.grid(params, manifest, run_flops)
    entry = pilots.recall(key) or pilots.run_all(params, manifest, tokens_dir, grid, key, device=..., ...)

The grid: 3 widths x 3 token counts. Each pilot keeps the configured model's architecture, layers,
head width, context and vocabulary and has WIDTH_FRACTIONS of its heads; it trains TOKEN_FRACTIONS
of its width's D_max tokens, D_max chosen so that each width's 3 pilots cost a third of
cost.forecast_share of the configured run's model FLOPs (the shortest pilot within one epoch; the
longer ones may repeat data, as the run may). Each is a whole run with its own schedule (warmup, cosine to min_lr
over its own steps), as the law's runs are: a run's loss mid-schedule, its LR still high, is not
the loss a run of that length ends at (Hoffmann et al. 2022, section 3.1).

The code path is the train stage's: its model, optimizer, LR schedule and step
(pipeline/engine/training.py), its data order (TrainWindows) and its validation subset
(pipeline/engine/validation.py: train.eval_batches steps' worth of windows, the same windows the
train stage validates on), seeded by train.seed. The pilots skip the trainer's checkpoints, logs
and budget guard: minutes of work need none of them.

Results are kept by content in the per-machine cache ($BUDGETGPT_CACHE_DIR or ~/.cache/budgetgpt,
pilots.json), under a key of the token files' and tokenizer's hashes, the recipe, the grid and the
device: an unchanged corpus, recipe and device never runs them again.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core.atomic import write_json
from pipeline.core.cache import cache_dir
from pipeline.core.errors import PipelineError
from pipeline.core.params import MIN_LR_FRACTION, Params, auto_lr
from pipeline.data.tokens import TRAIN_FILE, VAL_FILE, TokenManifest
from pipeline.model import compute

FILE_NAME = "pilots.json"
FORMAT = 1
WIDTH_FRACTIONS = (1 / 3, 1 / 2, 2 / 3)   # of the configured model's heads
TOKEN_FRACTIONS = (1 / 4, 1 / 2, 1.0)     # of D_max
MIN_STEPS = 10                            # a pilot's optimizer steps at least: fewer is warmup and noise
KEPT = 16                                 # grids kept in the cache
# the train keys a pilot's loss depends on: read one by one, as the estimate stage declares them
# (a dump of the section would read train.patience and the rest too)
RECIPE = ("optimizer", "lr", "min_lr", "muon_lr", "muon_momentum", "muon_weight_decay", "weight_decay", "beta1",
          "beta2", "grad_clip", "seed", "eval_batches", "tokens_per_step")


@dataclass(frozen=True)
class Pilot:
    n_head: int
    n_embd: int
    mlp_width: int | None
    tokens: int
    tokens_per_step: int
    warmup_steps: int

    @property
    def steps(self) -> int:
        return self.tokens // self.tokens_per_step


def grid(params: Params, manifest: TokenManifest, run_flops: float) -> list[Pilot]:
    """The 9 pilots for this run; a PipelineError when the corpus is too small to hold them."""
    model, train = params.model, params.train
    head_dim = model.n_embd // model.n_head
    heads = sorted({max(1, round(model.n_head * f)) for f in WIDTH_FRACTIONS})
    if len(heads) < 3 or heads[-1] >= model.n_head:
        raise PipelineError(f"cost.forecast: model.n_head {model.n_head} is too few heads for 3 smaller pilot "
                            "widths (3 or more needed): raise model.n_head, or set cost.forecast: false")
    shapes = [(h, h * head_dim, _mlp(model.mlp_width, h / model.n_head)) for h in heads]
    # each width gets the same FLOPs, so the narrowest trains the most tokens: past the first steps'
    # transient, where loss falls faster than any power law, as far as the share allows
    per_width = params.cost.forecast_share * run_flops / len(shapes) / sum(TOKEN_FRACTIONS)
    d_max = {shape: per_width / compute.flops_per_token(_model(model, *shape), manifest.vocab_size) for shape in shapes}
    d_min = min(d_max.values()) * TOKEN_FRACTIONS[0]
    # the configured batch where the shortest pilot still takes MIN_STEPS steps, else fewer windows
    windows = max(1, min(train.tokens_per_step, int(d_min // MIN_STEPS)) // model.context)
    step = windows * model.context
    if max(d_min, step * MIN_STEPS) > manifest.train_tokens:   # the shortest pilot within one epoch
        raise PipelineError(
            f"cost.forecast: the shortest pilot needs {max(int(d_min), step * MIN_STEPS):,} unique train tokens and "
            f"the corpus has {manifest.train_tokens:,}: add text, lower cost.forecast_share, or set cost.forecast: false")
    pilots = []
    for shape in shapes:
        for fraction in TOKEN_FRACTIONS:
            steps = max(MIN_STEPS, int(d_max[shape] * fraction) // step)
            warmup = round(train.warmup_steps * steps / max(1, train.max_steps))
            pilots.append(Pilot(*shape, tokens=steps * step, tokens_per_step=step, warmup_steps=warmup))
    return pilots


def _mlp(width: int | None, fraction: float) -> int | None:
    return None if width is None else max(1, round(width * fraction))


def _model(model, n_head: int, n_embd: int, mlp_width: int | None):
    return model.model_copy(update={"n_head": n_head, "n_embd": n_embd, "mlp_width": mlp_width})


def pilot_params(params: Params, pilot: Pilot) -> Params:
    """The configured params at the pilot's shape and schedule; an lr the configuration left auto
    follows the pilot's width, as it would the configured model's (Params.resolved)."""
    train = params.train
    lr = auto_lr(pilot.n_embd)[0] if params.is_auto("train.lr") else train.lr
    min_lr = lr * MIN_LR_FRACTION if params.is_auto("train.min_lr") else min(train.min_lr, lr)
    return params.model_copy(update={
        "model": _model(params.model, pilot.n_head, pilot.n_embd, pilot.mlp_width),
        "train": train.model_copy(update={"tokens_per_step": pilot.tokens_per_step, "max_steps": pilot.steps,
                                          "max_tokens": None, "warmup_steps": pilot.warmup_steps,
                                          "lr": lr, "min_lr": min_lr})})


def flops(params: Params, pilots: list[Pilot], vocab: int) -> float:
    return sum(compute.flops_per_token(_model(params.model, p.n_head, p.n_embd, p.mlp_width), vocab) * p.tokens
               for p in pilots)


def key(params: Params, manifest: TokenManifest, pilots: list[Pilot], device: str, precision: str) -> str:
    """What a pilot's loss depends on: the tokens, the recipe, the grid, the device and precision."""
    recipe = {k: getattr(params.train, k) for k in RECIPE}
    text = json.dumps({"format": FORMAT, "tokens": manifest.sha256, "tokenizer": manifest.tokenizer_sha256,
                       "model": params.section("model"), "recipe": recipe, "auto": [k for k in ("train.lr", "train.min_lr") if params.is_auto(k)],
                       "grid": [asdict(p) for p in pilots], "device": device, "precision": precision},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def recall(pilots_key: str) -> dict[str, Any] | None:
    entry = _read().get(pilots_key)
    return entry if isinstance(entry, dict) and isinstance(entry.get("results"), list) else None


def run_all(params: Params, manifest: TokenManifest, tokens_dir: Path, pilots: list[Pilot], pilots_key: str, *,
            device: str, precision: str, micro_batch_size: int) -> dict[str, Any]:
    """Train every pilot here and keep the results under `pilots_key`."""
    start = time.perf_counter()
    results = []
    for index, pilot in enumerate(pilots, 1):
        result = run_one(params, manifest, tokens_dir, pilot, device=device, precision=precision,
                         micro_batch_size=micro_batch_size)
        loss = "non-finite" if result["val_loss"] is None else f"{result['val_loss']:.4f}"
        print(f"pilot {index}/{len(pilots)}: {pilot.n_embd} wide, {pilot.tokens:,} tokens -> val loss {loss} "
              f"({result['seconds']:.1f} s)", flush=True)
        results.append(result)
    entry = {"results": results, "seconds": time.perf_counter() - start,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    entries = _read()
    entries.pop(pilots_key, None)
    entries[pilots_key] = entry
    try:
        write_json(_path(), dict(list(entries.items())[-KEPT:]))
    except OSError:
        pass   # an unwritable cache measures again next time
    return entry


def run_one(params: Params, manifest: TokenManifest, tokens_dir: Path, pilot: Pilot, *, device: str,
            precision: str, micro_batch_size: int) -> dict[str, Any]:
    """One pilot, trained as the train stage trains: its final loss on train's validation subset."""
    import torch

    from pipeline.data.batches import TrainWindows
    from pipeline.engine.training import build_training
    from pipeline.engine.validation import Validation

    p = pilot_params(params, pilot)
    context, seqs = p.model.context, pilot.tokens_per_step // p.model.context
    micro = max(d for d in range(1, seqs + 1) if seqs % d == 0 and d <= micro_batch_size)
    start = time.perf_counter()
    training = build_training(p, manifest.vocab_size, manifest.eot_token_id, device=device, precision=precision,
                              activation_checkpointing=False)
    windows = TrainWindows(Path(tokens_dir) / TRAIN_FILE, context, seqs, p.train.seed)
    for step in range(pilot.steps):
        training.step(step, lambda m, s=step: windows.batch(s, m, 0, 1, micro), seqs // micro)
    # the windows train validates on: train.eval_batches of the configured run's steps
    val_windows = params.train.eval_batches * (params.train.tokens_per_step // context)
    loss = Validation(Path(tokens_dir) / VAL_FILE, context, val_windows, micro).loss(
        training.raw, torch.device(device), precision)
    return {**asdict(pilot), "parameters": compute.hidden_matrix_parameters(p.model),
            "val_loss": loss if math.isfinite(loss) else None, "seconds": time.perf_counter() - start}


def check_falling(results: list[dict[str, Any]], vocab: int) -> None:
    """Pilots whose losses do not fall with tokens, or are no better than chance, mean a broken
    recipe (an lr that diverges, say): no law can be fitted to them."""
    broken = [r for r in results if r["val_loss"] is None or r["val_loss"] >= math.log(vocab)]
    by_width: dict[int, list[dict]] = {}
    for r in results:
        by_width.setdefault(r["n_embd"], []).append(r)
    flat = [w for w, rs in by_width.items()
            if not broken and min(rs, key=lambda r: r["tokens"])["val_loss"] <= max(rs, key=lambda r: r["tokens"])["val_loss"]]
    if broken or flat:
        what = (f"{len(broken)} of {len(results)} ended non-finite or above ln(vocab) = {math.log(vocab):.2f}"
                if broken else f"at width {', '.join(map(str, flat))} more tokens did not lower the loss")
        raise PipelineError(f"cost.forecast: the pilot losses do not fall ({what}): the recipe does not train at these "
                            "sizes (check train.lr, train.muon_lr, train.warmup_steps); cost.forecast: false "
                            "estimates without a forecast")


def _path() -> Path:
    return cache_dir() / FILE_NAME


def _read() -> dict:
    try:
        data = json.loads(_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
