"""Loss forecast benchmark: the estimate's forecast (cost.forecast: true) against runs trained to
the end, on bench/heldout.py's corpora (never used to choose the law's form or its defaults).

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/forecast.py [--langs az,tr,de]

Per corpus: its first CORPUS_BYTES, cleaned and tokenized by the clean and tokenize stages (the
demo's settings, data.val_fraction 0.1); the estimate stage with cost.forecast: true on a small model
(RUN_SETS over params.yaml + params/demo.yaml: 2 layers x 96, context 64, 600 steps of 512
tokens), which runs the 9 pilots and writes the forecast and the alternatives table into
cost.json; then the configured run and the first larger-model alternative of TARGET_ROWS with >= 8x
the largest pilot's model FLOPs, each trained to its end by the pilots' own function
(pipeline/cost/pilots.py: run_one: the train stage's model, optimizer, schedule, data order and
validation subset, train.seed), and each target's final validation loss held against its forecast.
The errors counted are those of forecasts of >= 8x the largest pilot's compute (checked, printed); a
run past the epochs the law covers (pipeline/cost/forecast.py: EPOCHS_TRUSTED) gets a floor, not a
forecast, and is scored by whether its floor held.

Results: bench/out/forecast/results.jsonl (one line per target and forecast) and the table printed.
Each target's loss is kept in bench/out/forecast/targets.jsonl and never trained again; `--targets-only`
trains the targets alone, printing none of their losses.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "forecast"
FILES = [ROOT / "params.yaml", ROOT / "params" / "demo.yaml"]
CORPUS_BYTES = 600_000
RUN_SETS = ["model.n_layer=2", "model.n_embd=96", "model.n_head=6", "model.context=64", "train.tokens_per_step=512",
            "train.max_steps=600", "train.warmup_steps=30", "train.eval_every=100", "train.eval_batches=4",
            "train.device=cpu", "cost.forecast=true", "data.val_fraction=0.1",
            # the forecast is measured, not the price: a CPU peak timed under load must not refuse the pilots
            "cost.override_budget=true"]
# (model width, epochs) rows of the alternatives table, besides the configured run: the first that has
# MIN_RATIO x the largest pilot's compute (a small corpus's one epoch may not)
TARGET_ROWS = [(144, 1.0), (144, 4.0)]
MIN_RATIO = 8.0


def _heldout():
    spec = importlib.util.spec_from_file_location("bench_heldout", ROOT / "bench" / "heldout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(lang: str):
    from pipeline.core import params as params_module
    from pipeline.registry import run_stage

    base = OUT / lang
    params = params_module.load(FILES, [f"paths.corpus={base / 'corpus'}", f"paths.clean={base / 'clean'}",
                                        f"paths.tokenizer={base / 'tokenizer'}", f"paths.tokens={base / 'tokens'}",
                                        f"paths.reports={base / 'reports'}", *RUN_SETS])
    if not (base / "tokens" / "manifest.json").is_file():
        text = _heldout().build(lang).read_bytes()
        cut = text.rfind(b"\n\n", 0, CORPUS_BYTES)
        (base / "corpus").mkdir(parents=True, exist_ok=True)
        (base / "corpus" / "text.txt").write_bytes(text[:cut] + b"\n")
        run_stage("clean", params)
        run_stage("tokenize", params)
    return params


def measure(lang: str) -> list[dict]:
    from pipeline.cost import pilots
    from pipeline.data.tokens import TokenManifest
    from pipeline.model import compute
    from pipeline.registry import run_stage

    params = prepare(lang)
    start = time.perf_counter()
    report = run_stage("estimate", params).as_dict()
    fc = report["forecast"]
    estimate_seconds = time.perf_counter() - start
    manifest = TokenManifest.read(Path(params.paths.tokens) / "manifest.json")
    largest = max(r["tokens"] * compute.flops_per_token(pilots.pilot_params(params, pilots.Pilot(
        **{k: r[k] for k in ("n_head", "n_embd", "mlp_width", "tokens", "tokens_per_step", "warmup_steps")})).model,
        manifest.vocab_size) for r in fc["pilots"]["grid"])
    def compute_ratio(row):
        target = _target(params, row["n_head"], row["n_embd"], row["tokens"])
        return row["tokens"] * compute.flops_per_token(pilots.pilot_params(params, target).model,
                                                       manifest.vocab_size) / largest

    listed = [next(a for a in fc["alternatives"] if a["n_embd"] == w and abs(a["epochs"] / e - 1) < 0.05)
              for w, e in TARGET_ROWS]
    rows = [a for a in fc["alternatives"] if a["configured"]]
    rows.append(next((a for a in listed if compute_ratio(a) >= MIN_RATIO), listed[-1]))
    out = []
    for row in rows:
        target = _target(params, row["n_head"], row["n_embd"], row["tokens"])
        t = time.perf_counter()
        actual = trained_loss(lang, params, manifest, target)
        result = {"corpus": f"heldout-{lang}", "n_embd": row["n_embd"], "tokens": row["tokens"],
                  "epochs": row["epochs"], "configured": row["configured"], "compute_x_largest_pilot": compute_ratio(row),
                  "forecast": row["loss"], "low": row["low"], "high": row["high"], "actual": actual,
                  # past the epochs the law covers the estimate gives a floor (row["low"]), no forecast
                  "beyond_law": row["beyond_law"], "floor_held": actual >= row["low"] if row["beyond_law"] else None,
                  "error_pct": 100 * (row["loss"] - actual) / actual, "inside_interval": row["low"] <= actual <= row["high"],
                  "unique_tokens": manifest.train_tokens, "pilots_seconds": fc["pilots"]["seconds"],
                  "estimate_seconds": estimate_seconds, "train_seconds": time.perf_counter() - t, "law": fc["law"]}
        print(json.dumps({k: v for k, v in result.items() if k != "law"}), flush=True)
        with open(OUT / "results.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(result) + "\n")
        out.append(result)
    return out


def _target(params, n_head: int, n_embd: int, tokens: int):
    """A target run: the configured recipe at this width and token count, its warmup scaled to its steps."""
    from pipeline.cost import pilots

    steps = tokens // params.train.tokens_per_step
    return pilots.Pilot(n_head, n_embd, None, tokens=tokens, tokens_per_step=params.train.tokens_per_step,
                        warmup_steps=round(params.train.warmup_steps * steps / params.train.max_steps))


def trained_loss(lang: str, params, manifest, target) -> float:
    """A target's final validation loss, trained here once and kept in targets.jsonl: it depends on
    neither the pilots nor the law, so a rerun after a change to either trains no target again."""
    from pipeline.cost import pilots

    path, key = OUT / "targets.jsonl", (f"heldout-{lang}", target.n_embd, target.tokens)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
    kept = {(r["corpus"], r["n_embd"], r["tokens"]): r["actual"] for r in rows}
    if key not in kept:
        t = time.perf_counter()
        kept[key] = pilots.run_one(params, manifest, Path(params.paths.tokens), target, device="cpu", precision="fp32",
                                   micro_batch_size=8)["val_loss"]
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"corpus": key[0], "n_embd": key[1], "tokens": key[2], "actual": kept[key],
                                 "seconds": time.perf_counter() - t}) + "\n")
    return kept[key]


def train_targets(lang: str) -> None:
    """--targets-only: the configured run and TARGET_ROWS trained (nothing printed of their losses),
    with no pilots and no forecast: the targets can train while the law is still being worked on."""
    from pipeline.cost import budget
    from pipeline.data.tokens import TokenManifest

    params = prepare(lang)
    manifest = TokenManifest.read(Path(params.paths.tokens) / "manifest.json")
    step, head_dim = params.train.tokens_per_step, params.model.n_embd // params.model.n_head
    rows = [(params.model.n_embd, budget.tokens_to_train(params))]
    rows += [(width, max(step, int(epochs * manifest.train_tokens) // step * step)) for width, epochs in TARGET_ROWS]
    for width, tokens in rows:
        trained_loss(lang, params, manifest, _target(params, width // head_dim, width, tokens))
        print(f"heldout-{lang}: {width} wide, {tokens:,} tokens trained", flush=True)


def table(results: list[dict]) -> None:
    print("| corpus | width | tokens | epochs | compute / largest pilot | forecast (90% interval) | actual | error |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for r in results:
        said = (f"floor {r['low']:.3f} (the law's {r['forecast']:.3f})" if r["beyond_law"] else
                f"{r['forecast']:.3f} ({r['low']:.3f}-{r['high']:.3f})")
        error = ("floor held" if r["floor_held"] else "below the floor") if r["beyond_law"] else f"{r['error_pct']:+.1f}%"
        print(f"| {r['corpus']} | {r['n_embd']}{' (configured)' if r['configured'] else ''} | {r['tokens']:,} | "
              f"{r['epochs']:.2f} | {r['compute_x_largest_pilot']:.1f}x | {said} | {r['actual']:.3f} | {error} |")
    counted = [r for r in results if not r["beyond_law"] and r["compute_x_largest_pilot"] >= MIN_RATIO]
    errors = [abs(r["error_pct"]) for r in counted]
    if errors:
        print(f"\n|error|: median {statistics.median(errors):.1f}%, worst {max(errors):.1f}% over the {len(errors)} "
              f"forecasts of >= {MIN_RATIO:g}x the largest pilot's compute (targets: median <= 3%, worst <= 6%)")
    floors = [r for r in results if r["beyond_law"]]
    print(f"floors (runs past the epochs the law covers): {sum(r['floor_held'] for r in floors)} of {len(floors)} held")


def main() -> None:
    import os

    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--langs", default="az,tr,de")
    parser.add_argument("--targets-only", action="store_true", help="train the targets alone (no forecast)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.environ.setdefault("BUDGETGPT_CACHE_DIR", str(OUT / "cache"))   # the bench's pilots, not the user's
    OUT.mkdir(parents=True, exist_ok=True)
    if args.targets_only:
        for lang in args.langs.split(","):
            train_targets(lang)
        return
    results = [r for lang in args.langs.split(",") for r in measure(lang)]
    if any(r["compute_x_largest_pilot"] < MIN_RATIO for r in results):
        print(f"note: a target under {MIN_RATIO:g}x the largest pilot's compute, not counted")
    table(results)


if __name__ == "__main__":
    main()
