"""The command: `python -m pipeline gpu-check` or `python -m pipeline.tools.gpucheck`, and the
whole check, within its time limit."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import PipelineError
from pipeline.tools import gpucheck
from pipeline.tools.gpucheck.configs import grid, measure, models, predict
from pipeline.tools.gpucheck.machine import cpu_machine, cuda_machine, prime_cuda_libraries, sdpa_settings
from pipeline.tools.gpucheck.packages import preflight
from pipeline.tools.gpucheck.paidrun import fp16_headroom, preflight_checks
from pipeline.tools.gpucheck.plans import PLAN_DEVICES, PlanProof, prove_plan
from pipeline.tools.gpucheck.report import judge, markdown, write_reports

if TYPE_CHECKING:
    from pipeline.core.params import Params

TIME_LIMIT_S = 420.0          # stop starting new configurations after 7 minutes: done within 8, the
                              # fp16 probe's training (120 demo steps, seconds on a GPU) within 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: the full check on this GPU; cpu: the demo model on CPU (default: cuda)")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default: paths.reports)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, metavar="SECONDS",
                        help=f"start no new configuration after this long (default: {TIME_LIMIT_S:g})")


def main(params: Params, args: argparse.Namespace) -> int:
    needed = preflight()
    if needed:
        raise PipelineError(needed)
    result = run(params, device=args.device, time_limit_s=args.time_limit)
    out = Path(args.out or params.paths.reports)
    text = markdown(result)
    write_reports(result, text, out)
    print(text, end="")
    print(f"\ngpu-check: wrote {out / 'gpu-check.md'} and {out / 'gpu-check.json'}"
          + (f"; {len(result['problems'])} problem(s)" if result["problems"] else ""))
    return 2 if result["problems"] else 0


def cli(argv: list[str] | None = None) -> int:
    """python -m pipeline.tools.gpucheck: checks the packages before importing any of them."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.gpucheck",
                                     description=gpucheck.__doc__.split("\n")[0])
    parser.add_argument("--params", action="append", metavar="FILE", help="params YAML (default: params.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    add_arguments(parser)
    args = parser.parse_args(argv)
    needed = preflight()
    if needed:
        print(needed, file=sys.stderr)
        return 2
    try:
        from pipeline.core import params as params_module

        return main(params_module.load(args.params, args.overrides), args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def run(params: Params, *, device: str, time_limit_s: float = TIME_LIMIT_S) -> dict[str, Any]:
    """Every configuration and plan this device allows, within the time limit; JSON-ready."""
    started = time.monotonic()
    machine = cuda_machine(params) if device == "cuda" else cpu_machine(params)
    over_time = lambda: time.monotonic() - started > time_limit_s  # noqa: E731
    checked = models(params, machine.kind)
    if machine.kind == "cuda":
        prime_cuda_libraries(checked[0][1], machine)
    configs = []
    for config, model_params in grid(machine, checked):
        if over_time():
            config.status, config.note = "skipped", f"time limit ({time_limit_s:g} s, --time-limit) reached"
        elif predict(config, model_params, machine):
            measure(config, model_params, machine)
        configs.append(config)
    plans = []
    for name in PLAN_DEVICES:
        proof = PlanProof(name, status="skipped", note="time limit reached") if over_time() else \
            prove_plan(name, params, machine)
        plans.append(proof)
    headroom = None if over_time() else fp16_headroom(machine.kind)
    result = {"format": 1, "device": machine.kind, "machine": machine.facts, "name": machine.name,
              "catalog_entry": machine.catalog_entry, "prediction_source": machine.prediction_source,
              "outside_allocator_bytes": machine.outside_allocator_bytes,
              "runtime_allowance_bytes": machine.device.runtime_overhead_bytes,
              "memory_headroom": params.cost.memory_headroom, "sdpa": sdpa_settings(machine.kind),
              "configs": [asdict(c) for c in configs], "plans": [asdict(p) for p in plans],
              "preflight": preflight_checks(params, machine), "fp16_headroom": headroom,
              "elapsed_s": round(time.monotonic() - started, 1), "time_limit_s": time_limit_s}
    result["problems"], result["warnings"] = judge(result)
    return result
