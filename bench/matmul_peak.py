"""This machine's peak matmul FLOP/s per precision, and the demo model's training MFU against it.

    .venv/bin/python -m bench.matmul_peak [--seconds 1] [--size N]   # from the repository root
    .venv/bin/python -m bench.matmul_peak --mfu [--steps 10] [--set model.architecture=gpt2 --set train.optimizer=adamw]

The peaks are measured as the `cpu` catalog entry measures them (pipeline.cost.cpuinfo, on the cores
this process may use), but never cached: `python -m pipeline.cost.cpuinfo --refresh` renews the entry's.
--size times that one size instead of choosing one. --mfu then times optimizer steps of
params/demo.yaml's model with the train stage's own step (pipeline/engine/step.py: the default recipe, or
what --set makes it; 16 sequences of 256 tokens: its train.tokens_per_step), in fp32 and, where the CPU
has it natively, bf16, and divides the model FLOP/s (pipeline.model.compute.flops_per_token) by that
precision's peak: the ratio that is the cpu entry's mfu_default. Run it on a quiet machine: other
processes on the same cores lower both numbers, and not always alike.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pipeline.model import compute
from pipeline.cost import cpuinfo
from pipeline.core import params as params_module
from pipeline.model.build import build_model
from pipeline.engine.step import TrainStep, optimizer_for

ROOT = Path(__file__).resolve().parent.parent
DEMO_PARAMS = [ROOT / "params.yaml", ROOT / "params" / "demo.yaml"]
WARMUP_STEPS = 2


def step_seconds(params: params_module.Params, steps: int, precision: str) -> tuple[float, float]:
    """(median, fastest) seconds of `steps` training steps of the model, after a warm-up."""
    vocab, context = params.tokenizer.vocab_size, params.model.context
    model = build_model(params.model, vocab, eos_token_id=0)
    step = TrainStep(model, optimizer_for(model, params.train), precision=precision, device="cpu",
                     grad_clip=params.train.grad_clip)
    ids = torch.randint(0, vocab, (params.train.tokens_per_step // context, context + 1))  # speed ignores content
    times = []
    for _ in range(WARMUP_STEPS + steps):
        start = time.perf_counter()
        step.micro(ids[:, :-1], ids[:, 1:], accum=1).item()
        step.update()
        times.append(time.perf_counter() - start)
    return statistics.median(times[WARMUP_STEPS:]), min(times[WARMUP_STEPS:])


def report_mfu(steps: int, peaks: dict[str, float], precisions: list[str], sets: list[str]) -> None:
    params = params_module.load(DEMO_PARAMS, sets)
    tokens = params.train.tokens_per_step
    flops = compute.flops_per_token(params.model, params.tokenizer.vocab_size) * tokens
    for precision in precisions:
        median, fastest = step_seconds(params, steps, precision)
        for name, seconds in (("median", median), ("fastest", fastest)):
            print(f"demo model {precision}, {name} of {steps} steps: {seconds * 1e3:,.0f} ms = "
                  f"{tokens / seconds:,.0f} tokens/s = {flops / seconds / 1e9:,.1f} GFLOP/s, MFU "
                  f"{compute.mfu(tokens / seconds, flops / tokens, peaks[precision]):.3f} of the {precision} peak")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=cpuinfo.SECONDS_PER_PRECISION, help="per precision")
    parser.add_argument("--size", type=int, help="time this square size (default: chosen per precision)")
    parser.add_argument("--mfu", action="store_true", help="also time the demo model's training steps")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps for --mfu")
    parser.add_argument("--set", action="append", default=[], help="--mfu: a params override (KEY=VALUE)")
    args = parser.parse_args()
    host = cpuinfo.host()
    torch.set_num_threads(host["cores"])
    print(f"{host['model']}: {host['cores_source']}; flags {' '.join(host['flags']) or 'none'}; "
          f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    peaks = {p: cpuinfo.matmul_peak(p, seconds=args.seconds, size=args.size) for p in cpuinfo.PRECISIONS}
    for name, run in peaks.items():
        print(f"{name}: {run['flops'] / 1e9:,.1f} GFLOP/s ({run['size']}x{run['size']}, of sizes {run['sizes']})")
    if args.mfu:
        native = ["fp32"] + (["bf16"] if host["bf16_native"] else [])
        report_mfu(args.steps, {p: run["flops"] for p, run in peaks.items()}, native, args.set)


if __name__ == "__main__":
    main()
