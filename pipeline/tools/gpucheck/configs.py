"""One configuration (model, precision, checkpointing) predicted against measured: the planner's
micro-batch and memory (compute.training_memory) and the catalog's step time, then a few real
steps of the train stage's own step, their peak memory, time, MFU, fp16 overflows and energy."""
from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.tools.gpucheck.machine import Machine, RandomTokenSteps, first_line, free_device, sdpa_kernel

if TYPE_CHECKING:
    from pipeline.core.params import Params

ROOT = Path(__file__).resolve().parents[3]
DEMO_OVERLAY = ROOT / "params" / "demo.yaml"
WARMUP_STEPS, TIMED_STEPS = 2, 3
CPU_WARMUP_STEPS, CPU_TIMED_STEPS = 1, 2
TIMED_SECONDS = 20.0          # fewer timed steps where one step is this slow (fp32 on a small GPU)
ENERGY_SECONDS = 1.0          # more timed steps where they are fast: NVML's counter needs a window to move
MAX_TIMED_STEPS = 50
ACCUM = 2                     # micro-batches per optimizer step: gradients stay alive across them, as
                              # the memory model assumes (what a run with accumulation does)
MICRO_TOKENS = {"cuda": 8192, "cpu": 1024}   # micro-batch cap: memory and speed, not a full step


@dataclass
class Config:
    model: str                  # "params" (the configured model) | "demo"
    shape: str
    precision: str
    checkpointing: bool
    micro_batch: int = 0
    accum: int = ACCUM
    status: str = "not run"     # ok | skipped | out of memory | failed
    note: str = ""
    predicted: dict[str, int] = field(default_factory=dict)     # compute.training_memory parts
    predicted_total_bytes: int = 0
    predicted_tensor_bytes: int = 0                             # without the runtime allowance
    measured: dict[str, Any] = field(default_factory=dict)
    memory_ratio: float | None = None                           # measured tensors / predicted tensors
    predicted_step_s: float | None = None
    measured_step_s: float | None = None
    mfu: float | None = None
    steps: int = 0
    fp16_skipped_steps: int | None = None
    energy_j_per_step: float | None = None
    sdpa_kernel: str | None = None


def models(params: Params, kind: str) -> list[tuple[str, Params]]:
    from pipeline.core import params as params_module

    demo = params_module.load([ROOT / "params.yaml", DEMO_OVERLAY])
    return [("demo", demo)] if kind == "cpu" else [("demo", demo), ("params", params)]


def _shape(params: Params) -> str:
    from pipeline.model import compute

    m, vocab = params.model, params.tokenizer.vocab_size
    millions = compute.parameter_count(m, vocab) / 1e6
    return f"{m.n_layer} layers x {m.n_embd}, context {m.context}, vocab {vocab} ({millions:.1f}M parameters)"


def grid(machine: Machine, models: list[tuple[str, Params]]) -> list[tuple[Config, Params]]:
    grid = []
    for name, params in models:
        for precision in machine.precisions:
            # CPU: fewer configurations (fp32 both ways, bf16 without checkpointing) to stay quick
            layouts = [False] if machine.kind == "cpu" and precision != "fp32" else [False, True]
            grid += [(Config(name, _shape(params), precision, ckpt), params) for ckpt in layouts]
    return grid


def _with_layout(params: Params, precision: str, checkpointing: bool) -> Params:
    train = params.train.model_copy(update={"precision": precision, "activation_checkpointing": checkpointing,
                                            "micro_batch_size": "auto"})
    return params.model_copy(update={"train": train, "cost": params.cost.model_copy(update={"num_devices": 1})})


def predict(config: Config, params: Params, machine: Machine) -> bool:
    """Fill the micro-batch and the predictions; False when the planner says it cannot fit."""
    from pipeline.model import compute
    from pipeline.cost.planner import divisors, fit_error, plan_for, sequences_per_device

    vocab, device = params.tokenizer.vocab_size, machine.device
    layout = _with_layout(params, config.precision, config.checkpointing)
    largest = plan_for(layout, device, vocab)
    if not largest.fits:
        config.status, config.note = "skipped", fit_error(largest, device, params)
        return False
    # a smaller micro-batch than the plan's keeps the check quick; one that divides the step's
    # sequences lets the planner itself price it (its memory model, whatever the architecture)
    cap = min(largest.plan.micro_batch_size, max(1, MICRO_TOKENS[machine.kind] // params.model.context))
    config.micro_batch = max(d for d in divisors(sequences_per_device(layout, 1)) if d <= cap)
    fixed = layout.model_copy(update={"train": layout.train.model_copy(update={"micro_batch_size": config.micro_batch})})
    memory = plan_for(fixed, device, vocab).memory
    config.predicted, config.predicted_total_bytes = memory.as_dict(), memory.total
    config.predicted_tensor_bytes = memory.total - memory.runtime
    from pipeline.cost.pricing import RECOMPUTE_FACTOR

    recompute = RECOMPUTE_FACTOR if config.checkpointing else 1.0
    flops = compute.flops_per_token(params.model, vocab) * _tokens(config, params) * recompute
    mfu = machine.device.mfu(config.precision) if machine.catalog_entry else machine.mfu
    config.predicted_step_s = flops / (machine.peak_flops[config.precision] * mfu)
    return True


def _tokens(config: Config, params: Params) -> int:
    return config.micro_batch * config.accum * params.model.context


def measure(config: Config, params: Params, machine: Machine) -> None:
    """Warm up, time, and measure one configuration; out of memory is a result, not a crash."""
    import torch

    free_device(machine.kind)
    try:
        _measure(config, params, machine)
        config.status = "ok"
    except torch.cuda.OutOfMemoryError as exc:
        config.status, config.note = "out of memory", first_line(exc)
    except Exception as exc:  # reported as a problem: one broken configuration must not hide the others
        config.status, config.note = "failed", f"{type(exc).__name__}: {first_line(exc)}"
    finally:
        free_device(machine.kind)


def _measure(config: Config, params: Params, machine: Machine) -> None:
    import torch

    from pipeline.model import compute

    kind = machine.kind
    before = torch.cuda.memory_allocated() if kind == "cuda" else 0
    stepping = RandomTokenSteps.build(params, kind, config.precision, config.checkpointing, config.micro_batch,
                                      config.accum)
    warmup, timed = (WARMUP_STEPS, TIMED_STEPS) if kind == "cuda" else (CPU_WARMUP_STEPS, CPU_TIMED_STEPS)
    config.sdpa_kernel = sdpa_kernel(stepping.timed_step)  # the first warm-up step, observed
    slowest = max([stepping.timed_step() for _ in range(warmup - 1)] or [0.0])
    timed = max(1, min(timed, int(TIMED_SECONDS / slowest))) if slowest else timed
    if kind == "cuda":
        torch.cuda.reset_peak_memory_stats()  # AdamW's states exist: the peak of a steady-state step
    energy = machine.energy
    start_mj = energy.millijoules() if energy else None
    times: list[float] = []
    while len(times) < timed or (start_mj is not None and sum(times) < ENERGY_SECONDS
                                 and len(times) < MAX_TIMED_STEPS):
        times.append(stepping.timed_step())
    end_mj = energy.millijoules() if energy else None
    if start_mj is not None and end_mj is not None:
        config.energy_j_per_step = (end_mj - start_mj) / 1000 / len(times)
    config.measured = _cuda_memory(before, machine) if kind == "cuda" else _cpu_memory(stepping)
    tensors = config.measured.get("tensor_peak_bytes")
    config.memory_ratio = tensors / config.predicted_tensor_bytes if tensors else None
    config.measured_step_s = statistics.median(times)
    rate = _tokens(config, params) / config.measured_step_s
    config.mfu = compute.mfu(rate, compute.flops_per_token(params.model, params.tokenizer.vocab_size),
                             machine.peak_flops[config.precision])
    config.steps = stepping.steps
    config.fp16_skipped_steps = stepping.skipped if config.precision == "fp16" else None


def _cuda_memory(before: int, machine: Machine) -> dict[str, Any]:
    import torch

    allocated = torch.cuda.max_memory_allocated() - before
    reserved = torch.cuda.max_memory_reserved()
    return {"how": "torch.cuda.max_memory_allocated / max_memory_reserved over the timed steps, after "
                   "torch.cuda.reset_peak_memory_stats",
            "tensor_peak_bytes": allocated, "reserved_peak_bytes": reserved,
            "device_peak_bytes": reserved + machine.outside_allocator_bytes}


def _cpu_memory(stepping: RandomTokenSteps) -> dict[str, Any]:
    """Peak bytes of live tensor storage over one more optimizer step, by torch's MemTracker: CPU
    has no allocator peak counter to reset, and process RSS also counts freed pages the allocator
    keeps and the Python heap, so it says little about one step."""
    import torch

    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except Exception as exc:  # torch built without distributed
        return {"how": f"not measured: torch.distributed._tools.mem_tracker is unavailable ({exc})"}
    tracker = MemTracker()
    tracker.track_external(stepping.training.raw, stepping.training.optimizer, *stepping.batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tracker:
            stepping.timed_step(after_micro=tracker.reset_mod_stats)  # it tracks one module call at a time
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    return {"how": "peak live tensor bytes over one optimizer step by torch.distributed._tools.mem_tracker."
                   "MemTracker (tensor storage only: the process footprint, the runtime part of the prediction, "
                   "is not measured on CPU)", "tensor_peak_bytes": peak}
