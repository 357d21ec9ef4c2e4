"""Does `train.lr: auto` hold across shapes? A learning-rate sweep at several widths and depths on
two corpora, around the rule's own value (pipeline.core.params.auto_lr).

    nice -n 19 .venv/bin/python bench/lr_sweep.py run [--stage 1]   # appends to bench/results/lr_sweep.jsonl
    .venv/bin/python bench/lr_sweep.py table                       # the table in bench/README.md

Each point is one run of bench/recipe.py's child (the train stage's engine, params.yaml +
params/demo.yaml) at a short schedule: context 256, 2,048 tokens per step, STEPS steps, warmup
WARMUP, cosine to a tenth of the peak, seed 0, fp32; scored once at the end by the loss on
VAL_WINDOWS windows spread over the val split.
The lr grid is the rule's value times FACTORS; a run whose best point is at an edge of the grid gets
one more point beyond that edge (`run` adds it), so every optimum is bracketed. Runs already in
the results file are not rerun: the sweep may be stopped and resumed at any point.

Stages, cheapest and most telling first, so partial results are usable: 1: demo corpus, 4 layers;
2: man pages (English), 4 layers; 3: both corpora at 2 layers; 4: gpt2+adamw at 4 and 2 layers.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.core.params import auto_lr  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "lr_sweep.jsonl"
STEPS, WARMUP, TOKENS_PER_STEP = 100, 10, 2048
VAL_WINDOWS = 64                # 16,384 val tokens, the same windows for every run of a corpus
THREADS = 1                     # one thread: a shared machine's other load stalls no OpenMP barrier
FACTORS = (0.5, 1.0, 2.0)
WIDTHS = (256, 128, 512)   # the demo's width first
HEAD_DIM = 64
STAGES = {1: [("demo", "qwen3+muon", 4)], 2: [("man", "qwen3+muon", 4)],
          3: [("demo", "qwen3+muon", 2), ("man", "qwen3+muon", 2)],
          4: [("demo", "gpt2+adamw", 4), ("demo", "gpt2+adamw", 2)]}


def rule_lr(width: int) -> float:
    """train.lr: auto at this width (the same rule for both recipes)."""
    return auto_lr(width)[0]


def load() -> list[dict]:
    return [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.is_file() else []


def point(data: str, recipe: str, layers: int, width: int, lr: float) -> dict:
    for done in load():
        if (done["data"], done["recipe"], done["n_layer"], done["n_embd"]) == (data, recipe, layers, width) \
                and math.isclose(done["lr"], lr, rel_tol=1e-6):
            return done
    cmd = [sys.executable, __file__, "child", "--data", data, "--recipe", recipe, "--layers", str(layers),
           "--width", str(width), "--lr", repr(lr)]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{data} {recipe} {layers}x{width} lr {lr:g} failed:\n{done.stderr[-3000:]}")
    result = {"data": data, "recipe": recipe, "n_layer": layers, "n_embd": width, "lr": lr,
              "rule_lr": rule_lr(width),
              **json.loads(line.removeprefix("RESULT ")), "total_s": time.perf_counter() - started,
              "steps": STEPS, "tokens_per_step": TOKENS_PER_STEP}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(f"{data} {recipe} {layers}x{width} lr {lr:.3g} (rule {rule_lr(width):.3g}): val {result['val_loss']:.4f}, "
          f"{result['total_s']:.0f} s", flush=True)
    return result


def child(data: str, recipe: str, layers: int, width: int, lr: float) -> dict:
    """One training with the train stage's engine, scored once at the end on VAL_WINDOWS windows."""
    import torch

    from pipeline.core import params as params_module
    from pipeline.data.batches import TrainWindows
    from pipeline.data.tokens import MANIFEST_FILE, TRAIN_FILE, VAL_FILE, TokenManifest
    from pipeline.engine.training import build_training
    from pipeline.engine.validation import Validation

    torch.set_num_threads(THREADS)
    base = _recipe().prepare(data)
    params = params_module.load(_recipe().FILES, [
        *_recipe().RECIPES[recipe], f"model.n_layer={layers}", f"model.n_embd={width}",
        f"model.n_head={width // HEAD_DIM}", f"train.tokens_per_step={TOKENS_PER_STEP}", f"train.max_steps={STEPS}",
        f"train.warmup_steps={WARMUP}", f"train.lr={lr!r}", f"train.min_lr={lr / 10!r}", "train.seed=0",
        "train.precision=fp32", "train.device=cpu"])
    context, seqs = params.model.context, TOKENS_PER_STEP // params.model.context
    manifest = TokenManifest.read(base / "tokens" / MANIFEST_FILE)
    training = build_training(params, manifest.vocab_size, manifest.eot_token_id, device="cpu", precision="fp32",
                              activation_checkpointing=False)
    windows = TrainWindows(base / "tokens" / TRAIN_FILE, context, seqs, 0)
    started = time.perf_counter()
    for s in range(STEPS):
        training.step(s, lambda m: windows.batch(s, m, 0, 1, seqs), 1)
    train_s = time.perf_counter() - started
    val = Validation(base / "tokens" / VAL_FILE, context, VAL_WINDOWS, seqs)
    return {"val_loss": val.loss(training.raw, torch.device("cpu"), "fp32"), "train_s": train_s,
            "parameters": training.parameters, "muon_lr": params.train.muon_lr}


def _recipe():
    spec = importlib.util.spec_from_file_location("bench_recipe", ROOT / "bench" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_setting(data: str, recipe: str, layers: int, width: int) -> None:
    """The rule's value x FACTORS, then one more factor of 2 past whichever edge is best."""
    rule = rule_lr(width)
    factors = list(FACTORS)
    for f in factors:
        point(data, recipe, layers, width, rule * f)
    for _ in range(2):
        runs = {r["lr"] / rule: r["val_loss"] for r in load()
                if (r["data"], r["recipe"], r["n_layer"], r["n_embd"]) == (data, recipe, layers, width)}
        best = min(runs, key=runs.get)
        if best <= min(runs) * 1.0001:
            point(data, recipe, layers, width, rule * best / 2)
        elif best >= max(runs) * 0.9999:
            point(data, recipe, layers, width, rule * best * 2)
        else:
            return


def table() -> str:
    """Per setting: the swept optimum (a parabola through the best point and its neighbours in log
    lr), the rule's lr, their ratio, and the loss at the swept lr nearest the rule's (within 15%)
    against the best swept loss."""
    runs = load()
    settings = sorted({(r["data"], r["recipe"], r["n_layer"], r["n_embd"]) for r in runs})
    lines = ["| corpus | recipe | layers x width | lr: val loss (64 windows) | best swept lr | fitted optimum | "
             "rule lr | rule / optimum | loss near rule vs best |", "|" + " --- |" * 9]
    for key in settings:
        pts = sorted((r["lr"], r["val_loss"]) for r in runs if (r["data"], r["recipe"], r["n_layer"], r["n_embd"]) == key)
        rule = rule_lr(key[3])
        best_i = min(range(len(pts)), key=lambda i: pts[i][1])
        fitted = _vertex(pts, best_i)
        near = min(pts, key=lambda p: abs(math.log(p[0] / rule)))
        at_rule = near[1] if abs(math.log(near[0] / rule)) < math.log(1.15) else None
        gap = f"{(at_rule / pts[best_i][1] - 1) * 100:+.2f}%" if at_rule else "-"
        cells = ", ".join(f"{'**' if i == best_i else ''}{lr:.3g}: {v:.4f}{'**' if i == best_i else ''}"
                          for i, (lr, v) in enumerate(pts))
        fit = f"{fitted:.3g}" if fitted else "(edge)"
        ratio = f"{rule / fitted:.2f}x" if fitted else "-"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} x {key[3]} | {cells} | {pts[best_i][0]:.3g} | {fit} | "
                     f"{rule:.3g} | {ratio} | {gap} |")
    secs = [r["total_s"] for r in runs]
    if secs:
        lines += ["", f"{len(runs)} runs, median {statistics.median(secs):.0f} s each (start-up and evaluations included)"]
    return "\n".join(lines)


def _vertex(pts: list[tuple[float, float]], i: int) -> float | None:
    """The minimum of the parabola through points i-1, i, i+1 in (log lr, loss); None at an edge."""
    if i == 0 or i == len(pts) - 1:
        return None
    (x0, y0), (x1, y1), (x2, y2) = [(math.log(lr), v) for lr, v in pts[i - 1:i + 2]]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    return math.exp(-b / (2 * a)) if a > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "table", "child"])
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, action="append", choices=list(STAGES), help="default: all, in order")
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    parser.add_argument("--lrs", help="run: these lrs (comma-separated) instead of the grid around the rule")
    args = parser.parse_args()
    if args.command == "child":
        print("RESULT " + json.dumps(child(args.data, args.recipe, args.layers, args.width, args.lr)))
        return
    if args.command == "run":
        for stage in args.stage or list(STAGES):
            for data, recipe, layers in STAGES[stage]:
                for width in map(int, args.widths.split(",")):
                    if args.lrs:
                        for lr in map(float, args.lrs.split(",")):
                            point(data, recipe, layers, width, lr)
                    else:
                        sweep_setting(data, recipe, layers, width)
    print(table())


if __name__ == "__main__":
    main()
