"""Training throughput on this machine: the train stage vs a minimal PyTorch loop vs nanoGPT.

    .venv/bin/python bench/train.py --nanogpt DIR [--rounds 2] [--configs tiny,gpt2] [--precisions fp32,bf16]
                                    [--steps WARMUP,MEASURED]   # default: per config, see CONFIGS
    .venv/bin/python bench/train.py --ab tiny fp32 [--steps 2,20]  # loop overhead, one process

DIR is a nanoGPT checkout (train.py, model.py, configurator.py); its files are copied to a
temporary directory and run there, nothing of it is kept. Without --nanogpt that column is skipped.

Three implementations, the same model size, tokens and batch:
  pipeline  pipeline.stages.train.run: the real stage (per-step DVCLive logging, one checkpoint, tqdm)
  minimal   the same Hugging Face model, AdamW and autocast in a bare loop over pre-built batches
  nanogpt   nanoGPT's train.py, fp32 (it never autocasts on CPU), compile off
Every measurement is a fresh child process; implementations are interleaved in each round and
the table shows the median over rounds of each run's median step time (warm-up steps dropped).
The stage's overheads are measured separately: building a step's batches from the memory map,
DVCLive logging per step, and one checkpoint save spread over params.yaml's checkpoint_every.
--ab alternates the stage's own step (Trainer.train_step: windows from the memory map, DVCLive,
tqdm, loss reduction) with a bare step on the same model and batch in one process, step by step,
so load from other processes hits both alike: the loop's overhead without the noise.
Heavy (GPT-2 124M on 2 cores): run it by hand on an otherwise idle machine, never in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "train"
CONFIGS = {  # name -> (n_layer, n_embd, n_head, context, micro-batch, warm-up steps, measured steps, vocab)
    "tiny": (4, 256, 4, 256, 8, 3, 10, None),      # vocab None: the demo tokenizer's
    "demo": (4, 256, 4, 256, 16, 3, 12, None),     # params/demo.yaml's model and step (4,096 tokens)
    "gpt2": (12, 768, 12, 1024, 1, 1, 3, 50257),
}


# --- data ------------------------------------------------------------------------------------------

def prepare_tokens() -> Path:
    """The demo corpus, tokenized by the real stage, once (bench/out/train/data)."""
    data = OUT / "data"
    if not (data / "tokens" / "manifest.json").is_file():
        from pipeline.tools import demo_corpus
        from pipeline.core import params
        from pipeline.registry import run_stage

        p = params.load([ROOT / "params.yaml", ROOT / "params" / "demo.yaml"],
                        [f"paths.corpus={data / 'corpus'}", f"paths.tokenizer={data / 'tokenizer'}",
                         f"paths.tokens={data / 'tokens'}"])
        demo_corpus.write(p.paths.corpus, demo_corpus.generate())
        run_stage("tokenize", p)
    return data


def tokens_for(data: Path, vocab: int | None) -> Path:
    """The token directory, its manifest declaring a GPT-2-sized vocabulary when asked (ids still fit)."""
    if vocab is None:
        return data / "tokens"
    alias = OUT / f"tokens-vocab{vocab}"
    alias.mkdir(parents=True, exist_ok=True)
    for name in ("train.bin", "val.bin"):
        if not (alias / name).exists():
            (alias / name).symlink_to(data / "tokens" / name)
    manifest = json.loads((data / "tokens" / "manifest.json").read_text())
    (alias / "manifest.json").write_text(json.dumps({**manifest, "vocab_size": vocab}))
    return alias


# --- one measurement per child process ------------------------------------------------------------

def child(impl: str, config: str, precision: str, data: Path, nanogpt: Path | None, warmup: int, steps: int) -> dict:
    n_layer, n_embd, n_head, context, micro, _, _, vocab = CONFIGS[config]
    tokens = tokens_for(data, vocab)
    impl, compiled = impl.removesuffix("+compile"), impl.endswith("+compile")
    if impl == "nanogpt":
        return run_nanogpt(nanogpt, tokens, config, warmup, steps, compiled)
    from pipeline.core import params as params_module

    work = Path(tempfile.mkdtemp(prefix=f"bench-{impl}-", dir=OUT))
    params = params_module.load([ROOT / "params.yaml", ROOT / "params" / "demo.yaml"], [
        f"paths.tokens={tokens}", f"paths.tokenizer={data / 'tokenizer'}", f"paths.reports={work / 'reports'}",
        f"paths.checkpoints={work / 'checkpoints'}", f"paths.model={work / 'model'}",
        "model.architecture=gpt2", "train.optimizer=adamw", f"train.compile={str(compiled).lower()}",  # nanoGPT's model
        f"model.n_layer={n_layer}", f"model.n_embd={n_embd}", f"model.n_head={n_head}", f"model.context={context}",
        f"train.tokens_per_step={micro * context}", f"train.micro_batch_size={micro}", f"train.precision={precision}",
        "train.device=cpu", "train.activation_checkpointing=false", f"train.max_steps={warmup + steps}",
        f"train.eval_every={warmup + steps}", f"train.checkpoint_every={warmup + steps}", "train.eval_batches=1",
        "train.warmup_steps=2"])
    try:
        if impl == "pipeline":
            return run_pipeline(params, work, warmup)
        if impl == "ab":
            return run_ab(params, data, warmup, steps)
        return run_minimal(params, warmup, steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_plan(params) -> Path:
    """The estimate stage's plan for these params, where train reads it (the bench prices nothing)."""
    from pipeline.cost import hardware
    from pipeline.cost.planner import plan_for
    from pipeline.data.tokens import MANIFEST_FILE, TokenManifest

    vocab = TokenManifest.read(params.paths.tokens / MANIFEST_FILE).vocab_size
    path = params.paths.reports / "plan.json"
    plan_for(params, hardware.get_device(params.cost), vocab).plan.write(path)
    return path


def run_pipeline(params, work: Path, warmup: int) -> dict:
    from pipeline.data.batches import TrainWindows
    from pipeline.registry import run_stage
    from pipeline.data.tokens import TRAIN_FILE

    write_plan(params)
    report = run_stage("train", params).as_dict()
    tsv = work / "reports" / "train_live" / "plots" / "metrics" / "train" / "tokens_per_second.tsv"
    rates = [float(line.split("\t")[1]) for line in tsv.read_text().splitlines()[1:]][warmup:]
    seconds = report["seconds"]
    log = seconds["log"] / report["steps"]  # DVCLive + tqdm, outside the per-step rate
    times = [params.train.tokens_per_step / r + log for r in rates]
    step = statistics.median(times) - log
    windows = TrainWindows(params.paths.tokens / TRAIN_FILE, params.model.context,
                           params.train.tokens_per_step // params.model.context, params.train.seed)
    t = time.perf_counter()
    for s in range(200):
        windows.batch(s, 0, 0, 1, params.train.micro_batch_size)
    data_seconds = (time.perf_counter() - t) / 200
    checkpoint_every = 500  # params.yaml's train.checkpoint_every, the real cadence
    return {"times": times, "data_seconds": data_seconds, "log_seconds": log,
            "checkpoint_seconds": seconds["checkpoint"],
            "overhead_share": (data_seconds + log + seconds["checkpoint"] / checkpoint_every) / (step + log),
            "precision": report["precision"], "rss": report["peak_memory_bytes"], "checkpoint_every": checkpoint_every}


def run_minimal(params, warmup: int, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from pipeline.data.batches import TrainWindows
    from pipeline.model.build import build_model
    from pipeline.data.tokens import TRAIN_FILE

    from pipeline.data.tokens import MANIFEST_FILE, TokenManifest

    manifest = TokenManifest.read(params.paths.tokens / MANIFEST_FILE)
    cfg, context = params.train, params.model.context
    torch.manual_seed(cfg.seed)
    model = build_model(params.model, manifest.vocab_size, manifest.eot_token_id)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    windows = TrainWindows(params.paths.tokens / TRAIN_FILE, context, cfg.tokens_per_step // context, cfg.seed)
    batches = [windows.batch(s, 0, 0, 1, cfg.micro_batch_size) for s in range(warmup + steps)]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.precision]
    times = []
    for x, y in batches:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t)
    return {"times": times[warmup:], "precision": cfg.precision}


def run_ab(params, data: Path, warmup: int, steps: int) -> dict:
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator

    from pipeline.cost import calibration
    from pipeline.cost.budget import BudgetGuard
    from pipeline.data.tokens import load
    from pipeline.engine.plan import setup_for
    from pipeline.engine.trainer import Trainer
    from pipeline.registry import by_name, paths_for

    paths = paths_for(by_name("train"), params)
    manifest = load(paths["tokens"], data / "tokenizer")
    accelerator = Accelerator(cpu=True)
    setup = setup_for(params, write_plan(params), "cpu", 1)
    outputs = {k: paths[k] for k in ("model", "train_live", "checkpoints", "train_report")}
    # no tokenizer: it is only saved with the final model, and these steps never finish a run
    stage = Trainer(params, setup, accelerator, manifest, paths["tokens"], None, outputs, BudgetGuard(None, 0),
                    remember=calibration.remember)
    model, optimizer = stage.training.raw, stage.training.optimizer
    x, y = stage.windows.batch(0, 0, 0, 1, setup.micro_batch_size)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[setup.precision]

    def bare() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    stage_times, bare_times = [], []
    with stage.session():
        for _ in range(warmup + steps):
            for step, times in ((stage.train_step, stage_times), (bare, bare_times)):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
    return {"stage": stage_times[warmup:], "bare": bare_times[warmup:],
            "ratio_of_medians": statistics.median(bare_times[warmup:]) / statistics.median(stage_times[warmup:]),
            "median_of_pair_ratios": statistics.median(b / a for a, b in zip(stage_times[warmup:], bare_times[warmup:]))}


def stage_nanogpt(source: Path, tokens: Path, vocab: int, workdir: Path) -> None:
    """nanoGPT's train.py, model.py and configurator.py in workdir, with our token files as its
    dataset `bench` (headerless uint16, as it reads them) and a meta.pkl naming the vocabulary."""
    import numpy as np

    from pipeline.data.tokens import read_tokens

    for name in ("train.py", "model.py", "configurator.py"):
        shutil.copy(source / name, workdir / name)
    data = workdir / "data" / "bench"
    data.mkdir(parents=True)
    for split in ("train", "val"):
        np.asarray(read_tokens(tokens / f"{split}.bin"), dtype=np.uint16).tofile(data / f"{split}.bin")
    with open(data / "meta.pkl", "wb") as fh:
        pickle.dump({"vocab_size": vocab}, fh)


def run_nanogpt(source: Path, tokens: Path, config: str, warmup: int, steps: int, compiled: bool = False) -> dict:
    n_layer, n_embd, n_head, context, micro, *_ = CONFIGS[config]
    vocab = json.loads((tokens / "manifest.json").read_text())["vocab_size"]
    with tempfile.TemporaryDirectory(prefix="nanogpt-") as tmp:
        tmp = Path(tmp)
        stage_nanogpt(source, tokens, vocab, tmp)
        args = ["--dataset=bench", "--device=cpu", f"--compile={compiled}", "--dtype=float32", "--bias=True",
                "--dropout=0.0", f"--n_layer={n_layer}", f"--n_head={n_head}", f"--n_embd={n_embd}",
                f"--block_size={context}", f"--batch_size={micro}", "--gradient_accumulation_steps=1",
                f"--max_iters={warmup + steps - 1}", "--eval_interval=100000", "--eval_iters=1",
                "--log_interval=1", "--always_save_checkpoint=False", "--warmup_iters=2", "--out_dir=out"]
        done = subprocess.run([sys.executable, "train.py", *args], cwd=tmp, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nanoGPT failed:\n{done.stderr[-2000:]}")
    times = [float(ms) / 1000 for ms in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", done.stdout, re.M)]
    return {"times": times[warmup:], "precision": "fp32"}


# --- driver ----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (skipped when absent)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default="tiny,gpt2")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", help="WARMUP,MEASURED steps per run, overriding the config's")
    parser.add_argument("--compile", action="store_true",
                        help="also the stage and nanoGPT under torch.compile (pipeline+compile, nanogpt+compile)")
    parser.add_argument("--ab", nargs=2, metavar=("CONFIG", "PRECISION"), help="stage step vs bare step, interleaved")
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "CONFIG", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path[0] = str(ROOT)  # not bench/: its tokenize.py would shadow the standard library's
    OUT.mkdir(parents=True, exist_ok=True)
    data = prepare_tokens()
    if args.ab:
        args.child = ["ab", *args.ab]
    if args.child:
        impl, config, precision = args.child
        warmup, steps = map(int, args.steps.split(",")) if args.steps else CONFIGS[config][5:7]
        print("RESULT " + json.dumps(child(impl, config, precision, data, args.nanogpt, warmup, steps)))
        return

    plan = []
    for config in args.configs.split(","):
        for precision in args.precisions.split(","):
            impls = ["pipeline", "minimal"] + (["nanogpt"] if args.nanogpt and precision == "fp32" else [])
            if args.compile:
                impls += ["pipeline+compile"] + (["nanogpt+compile"] if "nanogpt" in impls else [])
            plan += [(impl, config, precision) for impl in impls]
    results: dict[tuple[str, str, str], list[dict]] = {key: [] for key in plan}
    for round_ in range(args.rounds):
        for key in plan:
            cmd = [sys.executable, __file__, "--child", *key] + (["--nanogpt", str(args.nanogpt)] if args.nanogpt else []) \
                + (["--steps", args.steps] if args.steps else [])
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{key} failed:\n{done.stderr[-3000:]}")
            results[key].append(json.loads(line.removeprefix("RESULT ")))
            times = results[key][-1]["times"]
            print(f"round {round_ + 1} {key}: median {statistics.median(times) * 1000:.1f} ms/step, "
                  f"best {min(times) * 1000:.1f}", flush=True)
    (OUT / f"results-{args.configs}-{args.precisions}.json").write_text(json.dumps({" ".join(k): v for k, v in results.items()}, indent=1))
    print(table(results))


def table(results: dict[tuple[str, str, str], list[dict]]) -> str:
    """tok/s from the median over rounds of each run's median step, and from the best single step
    (the least disturbed by other load on a shared machine)."""
    rows = ["| config | precision | tok/s: pipeline | minimal | nanoGPT | pipeline/minimal | pipeline/nanoGPT | "
            "stage overhead (data + log + ckpt/500) |", "|" + " --- |" * 8]
    for config, precision in dict.fromkeys((c, p) for _, c, p in results):
        n_layer, n_embd, n_head, context, micro, *_ = CONFIGS[config]
        runs = {impl: r for (impl, c, p), r in results.items() if (c, p) == (config, precision)}
        median = {impl: micro * context / statistics.median(statistics.median(x["times"]) for x in r)
                  for impl, r in runs.items()}
        best = {impl: micro * context / min(min(x["times"]) for x in r) for impl, r in runs.items()}

        def cell(rates: dict[str, float], impl: str) -> str:
            return f"{rates[impl]:,.0f}" if impl in rates else "-"

        def ratio(impl: str) -> str:
            return f"{median['pipeline'] / median[impl]:.2f}x ({best['pipeline'] / best[impl]:.2f}x)" if impl in runs else "-"

        share = statistics.median(r["overhead_share"] for r in runs["pipeline"])
        rows.append(f"| {config} ({n_layer}x{n_embd}, ctx {context}, batch {micro}) | {precision} | "
                    + " | ".join(f"{cell(median, i)} ({cell(best, i)})" for i in ("pipeline", "minimal", "nanogpt"))
                    + f" | {ratio('minimal')} | {ratio('nanogpt')} | {share:.1%} |")
    return "\n".join(rows + ["", "median of run medians (best single step)", ""] + against_nanogpt(results))


def against_nanogpt(results: dict[tuple[str, str, str], list[dict]]) -> list[str]:
    """Every implementation and precision against nanoGPT's train.py as it runs by default on a
    CPU (fp32, no compile), per config."""
    rows = ["| config | implementation | precision | tok/s median (best) | / nanoGPT fp32 |", "|" + " --- |" * 5]
    for config in dict.fromkeys(c for _, c, _ in results):
        micro, context = CONFIGS[config][4], CONFIGS[config][3]
        rate = {(i, p): micro * context / statistics.median(statistics.median(x["times"]) for x in r)
                for (i, c, p), r in results.items() if c == config}
        best = {(i, p): micro * context / min(min(x["times"]) for x in r) for (i, c, p), r in results.items() if c == config}
        base = rate.get(("nanogpt", "fp32"))
        for key in rate:
            rows.append(f"| {config} | {key[0]} | {key[1]} | {rate[key]:,.0f} ({best[key]:,.0f}) | "
                        + (f"{rate[key] / base:.2f}x |" if base else "- |"))
    return rows


if __name__ == "__main__":
    main()
