"""The loss forecast's development measurements: English manual pages only (bench/heldout.py's corpora
are the held-out test set and are never read here). What the pilot grid was chosen on, and the
evidence for and against the ideas tried for runs that repeat their data.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/forecast_dev.py    # its trainings took 25 min at load 7-10

Corpora (CORPORA: man pages in sorted order, cleaned and tokenized by the stages, demo settings):
man-a, the first 600 kB; man-b, 600 kB from 1.5 MB on; man-s, 48 kB from 3 MB on (27k train
tokens: the configured run is 11 epochs). The model and run are bench/forecast.py's (2 layers x 96,
context 64, 600 steps of 512 tokens). Per corpus, trained by pipeline/cost/pilots.py's run_one:
- the pilot grid as shipped (TOKEN_FRACTIONS) and the earlier one (1/4, 1/2 and all of D_max), same FLOPs;
- targets: the configured run and 144 wide at one epoch;
- man-s alone: data-constrained pilots (each grid width on the first quarter of the train tokens,
  repeated for the run's 11 epochs), and the narrowest width on all of them for the run's tokens
  and half of them.
Then the law fitted to each grid and its error on each target, and the corpus's unigram
cross-entropy on its validation split (train frequencies, add-half smoothing): the loss of
token frequencies alone, which a pilot above it has not yet gone past.

Results: bench/out/forecast_dev/results.jsonl (one line per training; one already there is not
trained again) and the table printed.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "out" / "forecast_dev"
CORPORA = {"man-a": (0, 600_000), "man-b": (1_500_000, 600_000), "man-s": (3_000_000, 48_000)}  # (skip, bytes)
EARLIER_GRID = (1 / 4, 1 / 2, 1.0)
SUBSET = 0.25


def build(name: str):
    import forecast as bench
    import recipe

    from pipeline.core import params as params_module
    from pipeline.data.tokens import TokenManifest
    from pipeline.registry import run_stage

    skip, size = CORPORA[name]
    base = OUT / name
    paths = [f"paths.{k}={base / k}" for k in ("corpus", "clean", "tokenizer", "tokens", "reports")]
    params = params_module.load(bench.FILES, paths + bench.RUN_SETS)
    if not (base / "tokens" / "manifest.json").is_file():
        docs, position = [], 0
        for text in recipe._man_pages():
            data = text.strip().encode("utf-8", "replace")
            if not data:
                continue
            position += len(data) + 2
            if position <= skip:
                continue
            docs.append(data)
            if position >= skip + size:
                break
        (base / "corpus").mkdir(parents=True, exist_ok=True)
        (base / "corpus" / "text.txt").write_bytes(b"\n\n".join(docs) + b"\n")
        run_stage("clean", params)
        run_stage("tokenize", params)
    return params, TokenManifest.read(base / "tokens" / "manifest.json"), base / "tokens"


def train(name: str, kind: str, params, manifest, tokens: Path, pilot, unique: int | None = None) -> dict:
    """One training, kept in results.jsonl; `unique`: on the first this many train tokens alone."""
    from pipeline.cost import pilots
    from pipeline.data.tokens import TRAIN_FILE, VAL_FILE, read_tokens, write_tokens

    path = OUT / "results.jsonl"
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    for row in done:
        if (row["corpus"], row["kind"], row["n_embd"], row["tokens"], row.get("unique_tokens")) == \
                (name, kind, pilot.n_embd, pilot.tokens, unique):
            return row
    if unique:   # a token directory holding the subset
        subset = OUT / name / f"subset-{unique}"
        subset.mkdir(parents=True, exist_ok=True)
        write_tokens(subset / TRAIN_FILE, np.asarray(read_tokens(tokens / TRAIN_FILE)[:unique]))
        shutil.copyfile(tokens / VAL_FILE, subset / VAL_FILE)
        tokens = subset
    result = pilots.run_one(params, manifest, tokens, pilot, device="cpu", precision="fp32", micro_batch_size=8)
    row = {"corpus": name, "kind": kind, "U": manifest.train_tokens, "unique_tokens": unique, **result}
    print(json.dumps(row), flush=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    return row


def _pilot(n_head: int, n_embd: int, tokens: int, params):
    from pipeline.cost import pilots

    step = params.train.tokens_per_step
    steps = tokens // step
    return pilots.Pilot(n_head, n_embd, None, tokens=steps * step, tokens_per_step=step,
                        warmup_steps=round(params.train.warmup_steps * steps / params.train.max_steps))


def measure(name: str) -> dict:
    from pipeline.cost import budget, pilots
    from pipeline.model import compute

    params, manifest, tokens = build(name)
    run_tokens, unique = budget.tokens_to_train(params), manifest.train_tokens
    run_flops = run_tokens * compute.flops_per_token(params.model, manifest.vocab_size)
    grids = {}
    for label, fractions in (("shipped", pilots.TOKEN_FRACTIONS), ("earlier", EARLIER_GRID)):
        shipped, pilots.TOKEN_FRACTIONS = pilots.TOKEN_FRACTIONS, fractions
        try:
            grid = pilots.grid(params, manifest, run_flops)
        finally:
            pilots.TOKEN_FRACTIONS = shipped
        grids[label] = [train(name, f"pilot-{label}", params, manifest, tokens, p) for p in grid]
    head_dim = params.model.n_embd // params.model.n_head
    targets = [train(name, "target", params, manifest, tokens, _pilot(w // head_dim, w, n, params))
               for w, n in ((params.model.n_embd, run_tokens), (144, unique))]
    extra = []
    if run_tokens / unique > 4:
        subset = int(unique * SUBSET) // params.train.tokens_per_step * params.train.tokens_per_step
        narrowest = grids["shipped"][0]
        extra += [train(name, "subset", params, manifest, tokens,
                        _pilot(p["n_head"], p["n_embd"], int(run_tokens / unique * subset), params), subset)
                  for p in grids["shipped"][::3]]
        extra += [train(name, "narrowest-long", params, manifest, tokens,
                        _pilot(narrowest["n_head"], narrowest["n_embd"], n, params)) for n in (run_tokens, run_tokens // 2)]
    return {"grids": grids, "targets": targets, "extra": extra, "unigram": unigram_loss(tokens)}


def unigram_loss(tokens: Path) -> float:
    from pipeline.data.tokens import TRAIN_FILE, VAL_FILE, read_tokens

    train_ids, val_ids = np.asarray(read_tokens(tokens / TRAIN_FILE)), np.asarray(read_tokens(tokens / VAL_FILE))
    counts = np.bincount(train_ids, minlength=int(max(train_ids.max(), val_ids.max())) + 1) + 0.5
    return float(-np.log(counts[val_ids] / counts.sum()).mean())


def main() -> None:
    import torch

    from pipeline.cost import scaling

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.environ.setdefault("BUDGETGPT_CACHE_DIR", str(OUT / "cache"))
    OUT.mkdir(parents=True, exist_ok=True)
    errors: dict[str, list[float]] = {"shipped": [], "earlier": []}
    print("| corpus | grid | target width | epochs | forecast | actual | error | pilots above the unigram loss |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in CORPORA:
        m = measure(name)
        for label, grid in m["grids"].items():
            law = scaling.fit(*[[p[k] for p in grid] for k in ("parameters", "tokens", "U", "val_loss")])
            above = sum(p["val_loss"] > m["unigram"] for p in grid)
            for t in m["targets"]:
                forecast = law.loss(t["parameters"], t["tokens"], t["U"])
                error = 100 * (forecast - t["val_loss"]) / t["val_loss"]
                errors[label].append(error)
                print(f"| {name} | {label} | {t['n_embd']} | {t['tokens'] / t['U']:.2f} | {forecast:.3f} | "
                      f"{t['val_loss']:.3f} | {error:+.1f}% | {above} of {len(grid)} (unigram {m['unigram']:.3f}) |")
        for e in m["extra"]:
            print(f"{name}: {e['kind']} {e['n_embd']} wide, {e['tokens']:,} tokens of {e['unique_tokens'] or e['U']:,} "
                  f"unique ({e['tokens'] / (e['unique_tokens'] or e['U']):.1f} epochs): val loss {e['val_loss']:.3f}")
    for label, values in errors.items():
        print(f"{label} grid: |error| median {statistics.median(map(abs, values)):.1f}%, "
              f"worst {max(map(abs, values)):.1f}% over {len(values)} targets")


if __name__ == "__main__":
    main()
