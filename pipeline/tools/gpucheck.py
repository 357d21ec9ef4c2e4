"""The GPU check: one command on a freshly rented GPU VM, before a paid run, in under 10 minutes.

    make gpu-check                      # python -m pipeline.tools.gpucheck --device cuda
    make gpu-check DEVICE=cpu           # the same code, demo model only, on CPU (CI, about 3 minutes on 2 cores)
    python -m pipeline gpu-check [--params FILE ...] [--set KEY=VALUE ...] [--device cuda|cpu]

It trains a few real steps (pipeline.engine.training: the train stage's own model, optimizer, LR
schedule and step) on random token ids (speed and memory ignore content) of the configured model (params:
a GPT-2-small-sized Qwen3 + Muon, context 1024) and of the demo model (params/demo.yaml), in fp16 + GradScaler, bf16
where the device has it natively, and fp32, with activation checkpointing off and on, and records
predicted against measured peak memory (compute.training_memory, as the planner uses it) and step
time, fp16 overflow steps, NVML energy per step and the SDPA kernel that ran. Then it trains the
4 GB (rtx2050-laptop-4gb) and 16 GB (t4-16gb) plans for 20 steps each under a
torch.cuda.set_per_process_memory_fraction cap of that device's memory. Then what a first paid run
would meet: the NVIDIA driver against the torch build (pipeline/tools/cudabuilds.py), whether
torch.compile runs on this GPU and the planner refuses it where it does not, the SDPA kernel each
configuration ran (the math kernel breaks the memory plan), and the fp16 headroom of the demo model
after training on the bundled corpus (pipeline/tools/fp16probe.py). It writes
reports/gpu-check.md and reports/gpu-check.json and exits 2 when something would fail a run.

`python -m pipeline.tools.gpucheck` runs where only torch and transformers were installed: it first
checks that every package the pipeline imports is there, and says in one line what to pip install.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.core.params import Params

ROOT = Path(__file__).resolve().parents[2]
DEMO_OVERLAY = ROOT / "params" / "demo.yaml"
LOCK_FILE = ROOT / "requirements.lock"
# import name -> distribution: what the modules this check imports need (tests/test_gpucheck.py
# checks the list against their import statements)
REQUIRED = {"torch": "torch", "transformers": "transformers", "pydantic": "pydantic", "yaml": "PyYAML",
            "numpy": "numpy", "safetensors": "safetensors"}
UNPINNED = {"torch", "transformers"}   # the ones the VM brings, whichever recent version it has
TORCH_INSTALL = "https://pytorch.org/get-started/locally/"

from pipeline.core.units import GIB  # noqa: E402
TIME_LIMIT_S = 420.0          # stop starting new configurations after 7 minutes: done within 8, the
                              # fp16 probe's training (120 demo steps, seconds on a GPU) within 10
WARMUP_STEPS, TIMED_STEPS = 2, 3
CPU_WARMUP_STEPS, CPU_TIMED_STEPS = 1, 2
TIMED_SECONDS = 20.0          # fewer timed steps where one step is this slow (fp32 on a small GPU)
ENERGY_SECONDS = 1.0          # more timed steps where they are fast: NVML's counter needs a window to move
MAX_TIMED_STEPS = 50
ACCUM = 2                     # micro-batches per optimizer step: gradients stay alive across them, as
                              # the memory model assumes (what a run with accumulation does)
MICRO_TOKENS = {"cuda": 8192, "cpu": 1024}   # micro-batch cap: memory and speed, not a full step
PLAN_DEVICES = ("rtx2050-laptop-4gb", "t4-16gb")
PLAN_STEPS = 20
# the fp16 probe's model: the demo recipe trained on the bundled corpus, all 120 steps in fp16 on a GPU
# (seconds); on a CPU 20 steps of 1,024 tokens in fp32 (about half a minute on 2 cores)
HEADROOM_STEPS = {"cuda": 120, "cpu": 20}
HEADROOM_SETTINGS = {"cuda": [], "cpu": ["train.tokens_per_step=1024"]}
SDPA_OPS = {                  # aten ops of torch.nn.functional.scaled_dot_product_attention's backends
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "mem_efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "fused (overrideable)",
    "_scaled_dot_product_attention_math": "math",
}


# ---- what to install first -----------------------------------------------------------------------

def missing_packages() -> list[str]:
    return [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]


def install_line(missing: list[str]) -> str:
    """One line: the pip command, pinned as requirements.lock pins them (torch and transformers
    as the VM has them)."""
    pins = _lock_pins()
    names = [name if name in UNPINNED else pins.get(name.lower(), name) for name in missing]
    torch_note = f" (torch: the CUDA build from {TORCH_INSTALL})" if "torch" in missing else ""
    return f"gpu-check needs packages this Python lacks: pip install {' '.join(names)}{torch_note}"


def preflight() -> str | None:
    """What to install before the check can run, in one line; None when nothing."""
    missing = missing_packages()
    if missing:
        return install_line(missing)
    import transformers

    # the train stage turns checkpointing on through this method (pipeline/stages/train.py)
    if not hasattr(transformers.PreTrainedModel, "activation_checkpointing_enable"):
        pin = _lock_pins().get("transformers", "transformers")
        return (f"gpu-check needs the transformers the pipeline is built on: transformers "
                f"{transformers.__version__} has no PreTrainedModel.activation_checkpointing_enable: pip install {pin}")
    return None


def _lock_pins() -> dict[str, str]:
    try:
        lines = LOCK_FILE.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    return {line.split("==")[0].strip().lower(): line.strip() for line in lines if "==" in line}


# ---- the command -----------------------------------------------------------------------------------

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
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.gpucheck", description=__doc__.split("\n")[0])
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


# ---- the machine -------------------------------------------------------------------------------------

@dataclass
class Machine:
    kind: str                       # "cuda" | "cpu"
    name: str
    device: Any                     # pipeline.cost.hardware.Device the micro-batches are planned against
    catalog_entry: str | None       # the catalog entry this machine is, or None
    facts: dict[str, Any]
    peak_flops: dict[str, float]    # what step times are predicted from
    mfu: float
    prediction_source: str
    precisions: list[str]
    outside_allocator_bytes: int = 0
    energy: Any = None              # pipeline.engine.meter.EnergyCounter of the GPU, or None


def _cuda_machine(params: Params) -> Machine:
    import torch

    from pipeline.cost import hardware
    from pipeline.engine.meter import EnergyCounter
    from pipeline.tools import doctor

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise PipelineError(f"gpu-check --device cuda: torch {torch.__version__} ({build}) sees no CUDA GPU: run it "
                            "on the GPU machine (nvidia-smi should list the GPU), install a CUDA build of torch "
                            f"({TORCH_INSTALL}), or run make gpu-check DEVICE=cpu to check the CPU path")
    gpu = doctor.cuda_devices()[torch.cuda.current_device()]
    torch.empty(1, device="cuda")  # the CUDA context exists from here: measure what it holds
    free, total = torch.cuda.mem_get_info()
    outside = max(0, total - free - torch.cuda.memory_reserved())
    entry = hardware.gpu_entry(gpu.name, params.cost.extra_hardware)
    catalog = hardware.gpus(params.cost.extra_hardware)
    measured = {p: cuda_matmul_peak(p) for p in ("fp32", "fp16", "bf16") if p != "bf16" or gpu.bf16_native}
    if entry:
        base = catalog[entry]
        device = replace(base, memory_bytes=min(base.memory_bytes, gpu.total_bytes))
        peaks, mfu = base.peak_flops, base.mfu_default
        source = (f"catalog entry {entry}: its datasheet peak x its mfu_default {mfu:g} "
                  "(pipeline/cost/hardware.yaml), as the estimate stage predicts")
    else:
        gpus = list(catalog.values())
        mfu = statistics.median(d.mfu_default for d in gpus)
        device = hardware.Device(
            name="this GPU", description=gpu.name, kind="cuda", memory_bytes=gpu.total_bytes, memory_bandwidth=1.0,
            peak_flops={**{p: measured["fp32"] for p in ("fp16", "bf16")}, **measured}, bf16_native=gpu.bf16_native,
            power_watts=1.0, usd_per_hour_on_demand=None, usd_per_hour_spot=None, usd_per_hour_colab=None,
            mfu_default=mfu, runtime_overhead_bytes=int(statistics.median(d.runtime_overhead_bytes for d in gpus)))
        peaks = device.peak_flops
        source = (f"no catalog entry is a {gpu.name}: the matmul peak measured here x {mfu:g}, the median "
                  "mfu_default of the catalog's GPUs (an assumption)")
    facts = {**asdict(gpu), "bf16_native": gpu.bf16_native, "torch": torch.__version__,
             "measured_matmul_tflops": {p: f / 1e12 for p, f in measured.items()}}
    return Machine(kind="cuda", name=gpu.name, device=device, catalog_entry=entry, facts=facts,
                   peak_flops=dict(peaks), mfu=mfu, prediction_source=source,
                   precisions=["fp16"] + (["bf16"] if gpu.bf16_native else []) + ["fp32"],
                   outside_allocator_bytes=outside,
                   energy=EnergyCounter.of(gpu.index))


def _cpu_machine(params: Params) -> Machine:
    import torch

    from pipeline.cost import hardware

    cpu = hardware.get_device(params.cost.model_copy(update={"hardware": "cpu"}))
    facts = {"description": cpu.description, "torch": torch.__version__, "bf16_native": cpu.bf16_native,
             "memory_bytes": cpu.memory_bytes, "peak_tflops": {p: f / 1e12 for p, f in cpu.peak_flops.items()}}
    source = (f"catalog entry cpu: the matmul peaks pipeline.cost.cpuinfo measured on this machine x its mfu_default "
              f"{cpu.mfu_default:g}, as the estimate stage predicts")
    name = cpu.detected["model"] if cpu.detected else cpu.description
    return Machine(kind="cpu", name=name, device=cpu, catalog_entry="cpu", facts=facts,
                   peak_flops=cpu.peak_flops, mfu=cpu.mfu_default, prediction_source=source,
                   precisions=["fp32"] + (["bf16"] if cpu.bf16_native else []))


def cuda_matmul_peak(precision: str, size: int = 8192, repeats: int = 10) -> float:
    """Dense FLOP/s of the fastest of `repeats` square matmuls (after one warm-up)."""
    import torch

    from pipeline.engine.step import DTYPES

    a = torch.randn(size, size, device="cuda", dtype=DTYPES[precision])
    b = torch.randn(size, size, device="cuda", dtype=DTYPES[precision])
    a @ b
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    del a, b
    torch.cuda.empty_cache()
    return 2 * size**3 / best


# ---- the train stage's step on random tokens -----------------------------------------------------------

@dataclass
class RandomTokenSteps:
    """Optimizer steps of the engine's Training (pipeline/engine/training.py: the train stage's
    model, optimizer, LR schedule and step) on one batch of random token ids, timed and counted."""
    training: Any
    batch: tuple[Any, Any]
    accum: int
    steps: int = 0
    skipped: int = 0            # fp16 overflow: GradScaler skipped the update

    @classmethod
    def build(cls, params: Params, device: str, precision: str, checkpointing: bool, micro: int,
              accum: int) -> RandomTokenSteps:
        import torch

        from pipeline.engine.training import build_training

        vocab = params.tokenizer.vocab_size
        training = build_training(params, vocab, 0, device=device, precision=precision,
                                  activation_checkpointing=checkpointing)
        ids = torch.randint(0, vocab, (micro, params.model.context + 1), device=device)  # content does not matter
        return cls(training, (ids[:, :-1], ids[:, 1:]), accum)

    def timed_step(self, after_micro: Callable[[], Any] | None = None) -> float:
        """One optimizer step of `accum` micro-batches; its wall seconds."""
        import torch

        start = time.perf_counter()
        done = self.training.step(self.steps, lambda micro: self.batch, self.accum, after_micro=after_micro)
        if self.training.device.type == "cuda":
            torch.cuda.synchronize()
        self.steps += 1
        self.skipped += done.update is None or not done.update.applied
        return time.perf_counter() - start


def sdpa_kernel(run: Callable[[], Any]) -> str:
    """The SDPA backends whose aten ops ran during `run`. scaled_dot_product_attention dispatches to
    one backend op per call; a dispatch mode sees those ops (torch.profiler would too, at more cost)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpNames(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with OpNames() as seen:
        run()
    ran = [backend for op, backend in SDPA_OPS.items() if op in seen.names]
    return ", ".join(ran) or "none seen"


def sdpa_settings(kind: str) -> dict[str, Any]:
    """Which backends torch may pick (torch.backends.cuda.*_sdp_enabled) and, on CUDA, which can run
    GPT-2's attention (head dim 64, causal) on this GPU in fp16 (torch.backends.cuda.can_use_*)."""
    import torch

    cuda = torch.backends.cuda
    enabled = {"flash": cuda.flash_sdp_enabled(), "mem_efficient": cuda.mem_efficient_sdp_enabled(),
               "math": cuda.math_sdp_enabled()}
    if hasattr(cuda, "cudnn_sdp_enabled"):
        enabled["cudnn"] = cuda.cudnn_sdp_enabled()
    settings: dict[str, Any] = {"enabled": enabled}
    if kind == "cuda":
        settings["usable_fp16"] = _sdpa_usable()
    return settings


def _sdpa_usable() -> dict[str, bool | None]:
    import torch

    q = torch.zeros(1, 12, 256, 64, dtype=torch.float16, device="cuda")
    try:
        sdpa = torch.backends.cuda.SDPAParams(q, q, q, None, 0.0, True, False)
    except TypeError:  # torch before 2.5: no enable_gqa argument
        sdpa = torch.backends.cuda.SDPAParams(q, q, q, None, 0.0, True)
    checks = {"flash": "can_use_flash_attention", "mem_efficient": "can_use_efficient_attention",
              "cudnn": "can_use_cudnn_attention"}
    return {name: bool(getattr(torch.backends.cuda, fn)(sdpa, False)) if hasattr(torch.backends.cuda, fn) else None
            for name, fn in checks.items()}


def _prime_cuda_libraries(params: Params, machine: Machine) -> None:
    """One throwaway step per precision: cuBLAS and friends allocate their workspaces once, through
    torch's allocator, and would otherwise count against whichever configuration runs first."""
    for precision in machine.precisions:
        RandomTokenSteps.build(params, "cuda", precision, False, 1, 1).timed_step()
    _free_device("cuda")


def _free_device(kind: str) -> None:
    import torch

    gc.collect()
    if kind == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---- one configuration: predicted against measured ---------------------------------------------------

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


def _models(params: Params, kind: str) -> list[tuple[str, Params]]:
    from pipeline.core import params as params_module

    demo = params_module.load([ROOT / "params.yaml", DEMO_OVERLAY])
    return [("demo", demo)] if kind == "cpu" else [("demo", demo), ("params", params)]


def _shape(params: Params) -> str:
    from pipeline.model import compute

    m, vocab = params.model, params.tokenizer.vocab_size
    millions = compute.parameter_count(m, vocab) / 1e6
    return f"{m.n_layer} layers x {m.n_embd}, context {m.context}, vocab {vocab} ({millions:.1f}M parameters)"


def _configs(machine: Machine, models: list[tuple[str, Params]]) -> list[tuple[Config, Params]]:
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


def _predict(config: Config, params: Params, machine: Machine) -> bool:
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

    _free_device(machine.kind)
    try:
        _measure(config, params, machine)
        config.status = "ok"
    except torch.cuda.OutOfMemoryError as exc:
        config.status, config.note = "out of memory", _first_line(exc)
    except Exception as exc:  # reported as a problem: one broken configuration must not hide the others
        config.status, config.note = "failed", f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        _free_device(machine.kind)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


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


# ---- the 4 GB and 16 GB plans under a memory cap --------------------------------------------------------

@dataclass
class PlanProof:
    device: str
    layout: str = ""
    precision_run: str = ""
    status: str = "not run"     # fits | out of memory | failed | skipped | no plan
    note: str = ""
    predicted_bytes: int = 0
    usable_bytes: int = 0
    cap_bytes: int | None = None
    steps: int = 0
    tensor_peak_bytes: int | None = None
    reserved_peak_bytes: int | None = None
    fp16_skipped_steps: int | None = None


def prove_plan(name: str, params: Params, machine: Machine) -> PlanProof:
    from pipeline.cost import hardware
    from pipeline.cost.planner import describe, fit_error, plan_for

    proof = PlanProof(device=name)
    device = hardware.get_device(params.cost.model_copy(update={"hardware": name}))
    fit = plan_for(params.model_copy(update={"cost": params.cost.model_copy(update={"hardware": name,
                                                                                    "num_devices": 1})}),
                   device, params.tokenizer.vocab_size)
    proof.layout, proof.predicted_bytes, proof.usable_bytes = describe(fit.plan), fit.memory.total, fit.usable_bytes
    if not fit.fits:
        proof.status, proof.note = "no plan", fit_error(fit, device, params)
        return proof
    if machine.kind != "cuda":
        proof.status, proof.note = "skipped", "predicted only: the memory cap needs a CUDA GPU"
        return proof
    total = machine.facts["total_bytes"]
    if device.memory_bytes > total and machine.catalog_entry != name:
        proof.status = "skipped"
        proof.note = (f"the {device.memory_bytes / GIB:.2f} GiB cap is larger than this GPU's "
                      f"{total / GIB:.2f} GiB: run the check on a larger GPU to prove this plan")
        return proof
    proof.cap_bytes = min(device.memory_bytes, total)
    _run_capped(proof, fit.plan, params, machine)
    if device.memory_bytes > total:
        proof.note = "; ".join(filter(None, [proof.note, f"this GPU is a {name}: the cap is its whole memory"]))
    return proof


def _run_capped(proof: PlanProof, plan: Any, params: Params, machine: Machine) -> None:
    import torch

    # bf16 and fp16 hold the same bytes; emulated bf16 would spend minutes for the same answer
    proof.precision_run = plan.precision if plan.precision != "bf16" or machine.facts["bf16_native"] else "fp16"
    if proof.precision_run != plan.precision:
        proof.note = "ran fp16 in place of bf16 (same bytes; this GPU has no native bf16)"
    _free_device("cuda")
    torch.cuda.set_per_process_memory_fraction(proof.cap_bytes / machine.facts["total_bytes"])
    stepping = None
    try:
        stepping = RandomTokenSteps.build(params, "cuda", proof.precision_run, plan.activation_checkpointing,
                                          plan.micro_batch_size, plan.grad_accum_steps)
        for _ in range(PLAN_STEPS):
            stepping.timed_step()
        proof.status = "fits"
    except torch.cuda.OutOfMemoryError as exc:
        proof.status, proof.note = "out of memory", "; ".join(filter(None, [proof.note, _first_line(exc)]))
    except Exception as exc:  # reported as a problem; the cap is lifted below either way
        proof.status, proof.note = "failed", f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        proof.steps = stepping.steps if stepping else 0
        proof.fp16_skipped_steps = stepping.skipped if stepping and proof.precision_run == "fp16" else None
        proof.tensor_peak_bytes = torch.cuda.max_memory_allocated()
        proof.reserved_peak_bytes = torch.cuda.max_memory_reserved()
        stepping = None
        _free_device("cuda")
        torch.cuda.set_per_process_memory_fraction(1.0)


# ---- the whole check -------------------------------------------------------------------------------------

def run(params: Params, *, device: str, time_limit_s: float = TIME_LIMIT_S) -> dict[str, Any]:
    """Every configuration and plan this device allows, within the time limit; JSON-ready."""
    started = time.monotonic()
    machine = _cuda_machine(params) if device == "cuda" else _cpu_machine(params)
    over_time = lambda: time.monotonic() - started > time_limit_s  # noqa: E731
    models = _models(params, machine.kind)
    if machine.kind == "cuda":
        _prime_cuda_libraries(models[0][1], machine)
    configs = []
    for config, model_params in _configs(machine, models):
        if over_time():
            config.status, config.note = "skipped", f"time limit ({time_limit_s:g} s, --time-limit) reached"
        elif _predict(config, model_params, machine):
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


# ---- what a first paid run meets: the driver, torch.compile, fp16 headroom -------------------------------

def preflight_checks(params: Params, machine: Machine) -> dict[str, Any]:
    """The driver against the torch build, and torch.compile here against the planner's rule."""
    from pipeline.tools import cudabuilds

    found = cudabuilds.nvidia_smi()
    checks = {"driver": found[0][1] if found else None, "driver_problem": cudabuilds.preflight(),
              "compile": None}
    if machine.kind == "cuda":
        checks["compile"] = _compile_here(params, machine)
    return checks


def _compile_here(params: Params, machine: Machine) -> dict[str, Any]:
    """Whether torch.compile builds a kernel on this GPU, and whether the planner allows it here."""
    import torch

    from pipeline.cost.planner import check_compile

    try:
        check_compile(params.model_copy(update={"train": params.train.model_copy(update={"compile": True})}),
                      machine.device)
        allowed, why = True, ""
    except PipelineError as exc:
        allowed, why = False, str(exc)
    torch._dynamo.reset()
    try:
        torch.compile(lambda x: torch.nn.functional.silu(x) * 2)(torch.ones(64, device="cuda"))
        torch.cuda.synchronize()
        runs, note = True, ""
    except Exception as exc:  # Triton refusing this GPU is the result being checked
        runs, note = False, f"{type(exc).__name__}: {_first_line(exc)}"
    return {"planner_allows": allowed, "planner_says": why, "runs": runs, "note": note}


def fp16_headroom(kind: str) -> dict[str, Any]:
    """The demo model trained on the bundled corpus (tokenized here, in a temporary directory),
    then probed for fp16 headroom: the report's table and its verdict."""
    import tempfile

    from pipeline.core import params as params_module
    from pipeline.registry import run_stage
    from pipeline.tools import demo_corpus, fp16probe

    with tempfile.TemporaryDirectory(prefix="budgetgpt-fp16-probe-") as tmp:
        paths = [f"paths.{key}={Path(tmp) / key}" for key in ("corpus", "tokenizer", "tokens", "reports")]
        params = params_module.load([ROOT / "params.yaml", DEMO_OVERLAY], paths + HEADROOM_SETTINGS[kind])
        demo_corpus.write(params.paths.corpus, demo_corpus.generate())
        run_stage("tokenize", params)
        headroom = fp16probe.after_training(params, HEADROOM_STEPS[kind], device=kind,
                                            precision="fp16" if kind == "cuda" else "fp32")
    return {**headroom.as_dict(), "markdown": fp16probe.markdown(headroom)}


def judge(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Problems: what would break a run. The planner keeps cost.memory_headroom free, so measured
    tensors up to predicted / (1 - headroom) still fit a plan made at the limit; more may not."""
    problems, notes = _preflight_problems(result)
    slack = 1 / (1 - result["memory_headroom"])
    for c in result["configs"]:
        problems += _config_problems(c, slack)
    for p in result["plans"]:
        if p["status"] == "out of memory":
            problems.append(f"plan for {p['device']} ({p['layout']}) ran out of memory under the "
                            f"{p['cap_bytes'] / GIB:.2f} GiB cap after {p['steps']} steps: {p['note']}")
        elif p["status"] == "failed":
            problems.append(f"plan for {p['device']} ({p['layout']}): the training step failed: {p['note']}")
        elif p["status"] == "no plan":
            notes.append(f"no plan fits {p['device']} for these params: {p['note']}")
        elif p["status"] == "fits" and p["reserved_peak_bytes"] + result["outside_allocator_bytes"] > p["cap_bytes"]:
            notes.append(f"plan for {p['device']}: {p['reserved_peak_bytes'] / GIB:.2f} GiB reserved plus "
                         f"{result['outside_allocator_bytes'] / GIB:.2f} GiB outside torch's allocator here exceeds "
                         "the cap: tight on the real card (its CUDA context may be smaller than this GPU's)")
    allowance = result.get("runtime_allowance_bytes") or 0
    if result["device"] == "cuda" and result["outside_allocator_bytes"] > allowance:
        notes.append(f"{result['outside_allocator_bytes'] / GIB:.2f} GiB of this GPU is held outside torch's allocator "
                     f"(CUDA context, other processes), more than the {allowance / GIB:.2f} GiB runtime allowance "
                     "the planner adds (runtime_overhead_gib in pipeline/cost/hardware.yaml, or "
                     "cost.extra_hardware.<name>.runtime_overhead_gib)")
    return problems, notes


def _preflight_problems(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    checks, problems, notes = result["preflight"], [], []
    if checks["driver_problem"]:
        problems.append(checks["driver_problem"])
    compiled = checks["compile"]
    if compiled and compiled["planner_allows"] and not compiled["runs"]:
        problems.append(f"torch.compile fails on this GPU ({compiled['note']}) but the planner allows "
                        "train.compile here: a compiled run would fail at its first step")
    elif compiled and not compiled["planner_allows"] and compiled["runs"]:
        notes.append("torch.compile ran on this GPU although the planner refuses train.compile for it: "
                     "the refusal (pipeline/cost/planner.py: check_compile) may be out of date")
    headroom = result.get("fp16_headroom")
    if headroom:
        problems += headroom["problems"]
    if result["device"] == "cuda":
        problems += [f"{c['model']} {c['precision']}: SDPA ran the math kernel ({c['sdpa_kernel']}), whose T x T "
                     "scores the memory plan does not hold" for c in result["configs"]
                     if c["status"] == "ok" and "math" in (c["sdpa_kernel"] or "")]
    return problems, notes


def _config_problems(c: dict[str, Any], slack: float) -> list[str]:
    what = f"{c['model']} {c['precision']}{' + checkpointing' if c['checkpointing'] else ''}"
    measured = c["measured"].get("tensor_peak_bytes")
    if c["status"] == "out of memory":
        return [f"{what}: out of memory although the planner predicted "
                f"{c['predicted_total_bytes'] / GIB:.2f} GiB fits: {c['note']}"]
    if c["status"] == "failed":
        return [f"{what}: the training step failed: {c['note']}"]
    found = []
    if c["status"] == "ok" and measured and measured > c["predicted_tensor_bytes"] * slack:
        found.append(f"{what}: {measured / GIB:.3f} GiB of tensors measured, more than the predicted "
                     f"{c['predicted_tensor_bytes'] / GIB:.3f} GiB / (1 - cost.memory_headroom): plans made by "
                     "compute.training_memory may not fit this device")
    if c["fp16_skipped_steps"] and c["fp16_skipped_steps"] == c["steps"]:
        found.append(f"{what}: every fp16 step overflowed (GradScaler skipped all {c['steps']})")
    return found


# ---- the reports ---------------------------------------------------------------------------------------

def write_reports(result: dict[str, Any], text: str, out: Path) -> None:
    from pipeline.core.atomic import write_json, write_text

    write_json(out / "gpu-check.json", result)
    write_text(out / "gpu-check.md", text)


def _gib(n: int | float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(result: dict[str, Any]) -> str:
    sdpa = result["sdpa"]
    lines = [f"# GPU check: {result['name']} ({result['device']})", ""]
    lines += _machine_lines(result) + [""]
    lines += [f"- Step time predicted from: {result['prediction_source']}.",
              f"- SDPA backends enabled (torch.backends.cuda.*_sdp_enabled): {', '.join(k for k, v in sdpa['enabled'].items() if v) or 'none'}"
              + (f"; usable here for GPT-2 attention in fp16: "
                 f"{', '.join(k for k, v in sdpa['usable_fp16'].items() if v) or 'none'}" if "usable_fp16" in sdpa else ""),
              f"- Ran in {result['elapsed_s']:g} s (new configurations start only within {result['time_limit_s']:g} s)."]
    measured_how = next((c["measured"]["how"] for c in result["configs"] if c["measured"].get("how")), None)
    if measured_how:
        lines.append(f"- Measured memory: {measured_how}.")
    lines += ["", f"## Memory and speed (one step = {ACCUM} micro-batches, random token ids)", "",
              "| model | precision | checkpointing | micro-batch | predicted GiB (tensors / with runtime) | "
              "measured GiB | measured / predicted | predicted s/step | measured s/step | MFU | fp16 skipped | "
              "J/step | SDPA kernel | status |",
              "|" + " --- |" * 14]
    for c in result["configs"]:
        lines.append(_config_row(c))
    lines += ["", "Models: " + "; ".join(sorted({f"{c['model']}: {c['shape']}" for c in result["configs"]})), "",
              f"## The 4 GB and 16 GB plans ({PLAN_STEPS} steps under torch.cuda.set_per_process_memory_fraction)", "",
              "| plan for | layout | predicted GiB | usable GiB | cap GiB | ran as | steps | allocated peak GiB | "
              "reserved peak GiB | fp16 skipped | status |", "|" + " --- |" * 11]
    for p in result["plans"]:
        lines.append(f"| {p['device']} | {p['layout']} | {_gib(p['predicted_bytes'])} | {_gib(p['usable_bytes'])} | "
                     f"{_gib(p['cap_bytes'])} | {p['precision_run'] or '-'} | {p['steps']} | "
                     f"{_gib(p['tensor_peak_bytes'])} | {_gib(p['reserved_peak_bytes'])} | "
                     f"{_num(p['fp16_skipped_steps'], 'd')} | {p['status']}{': ' + p['note'] if p['note'] else ''} |")
    lines += ["", "## Before a paid run", ""] + _preflight_lines(result)
    headroom = result.get("fp16_headroom")
    if headroom:
        lines += ["", "## fp16 headroom (pipeline/tools/fp16probe.py)", ""]
        lines += headroom["markdown"].splitlines()[2:]
    lines += ["", "## Verdict", ""]
    lines += [f"- problem: {p}" for p in result["problems"]] + [f"- note: {w}" for w in result["warnings"]]
    if not result["problems"]:
        proven = [p["device"] for p in result["plans"] if p["status"] == "fits"]
        lines.append("- no problems: the memory model's predictions hold here"
                     + (f"; the plans for {' and '.join(proven)} train within their caps" if proven else
                        "; no plan was trained (make gpu-check on a GPU machine does)"))
    return "\n".join(lines) + "\n"


def _machine_lines(result: dict[str, Any]) -> list[str]:
    f = result["machine"]
    if result["device"] == "cpu":
        return [f"- {f['description']}; torch {f['torch']}",
                "- fp16 is not checked on CPU (it trains in fp32, or bf16 where native); the plans are predicted "
                "only: make gpu-check on a GPU machine trains them"]
    cap = f"{f['capability'][0]}.{f['capability'][1]}"
    peaks = ", ".join(f"{p} {t:.1f}" for p, t in f["measured_matmul_tflops"].items())
    return [f"- compute capability {cap}, bf16 {'native' if f['bf16_native'] else 'emulated (fp16 + loss scaling)'}; "
            f"{f['total_bytes'] / GIB:.2f} GiB, {result['outside_allocator_bytes'] / GIB:.2f} GiB outside torch's "
            "allocator at start (CUDA context, other processes)",
            f"- torch {f['torch']}, CUDA {f['cuda_version']}, driver {f['driver_version'] or 'unknown (no pynvml)'}; "
            f"NVML energy counter: {'reads' if f['energy_counter'] else f['energy_note']}",
            f"- catalog entry: {result['catalog_entry'] or 'none'}; matmul peak measured here, TFLOP/s: {peaks}"]


def _preflight_lines(result: dict[str, Any]) -> list[str]:
    checks = result["preflight"]
    driver = ("no nvidia-smi here" if not checks["driver"] else
              f"{checks['driver']}: " + ("too old, see the verdict" if checks["driver_problem"] else
                                         "new enough for this torch build"))
    lines = [f"- NVIDIA driver (nvidia-smi): {driver}"]
    compiled = checks["compile"]
    if compiled:
        lines.append(f"- torch.compile here: {'runs' if compiled['runs'] else 'fails (' + compiled['note'] + ')'}; "
                     f"the planner {'allows' if compiled['planner_allows'] else 'refuses'} train.compile here")
    else:
        lines.append("- torch.compile: not checked on CPU (the refusal is for GPUs below compute capability 8.0)")
    return lines


def _config_row(c: dict[str, Any]) -> str:
    measured = c["measured"].get("tensor_peak_bytes")
    status = c["status"] + (f": {c['note']}" if c["note"] else "")
    return (f"| {c['model']} | {c['precision']} | {'on' if c['checkpointing'] else 'off'} | {c['micro_batch'] or '-'} | "
            f"{_gib(c['predicted_tensor_bytes'])} / {_gib(c['predicted_total_bytes'])} | {_gib(measured)} | "
            f"{_num(c['memory_ratio'], '.2f')} | {_num(c['predicted_step_s'])} | {_num(c['measured_step_s'])} | "
            f"{_num(c['mfu'], '.2f')} | {_num(c['fp16_skipped_steps'], 'd')} | {_num(c['energy_j_per_step'])} | "
            f"{c['sdpa_kernel'] or '-'} | {status} |")


if __name__ == "__main__":
    sys.exit(cli())
