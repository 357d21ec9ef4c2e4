"""The machine the check runs on (its GPU or CPU, its catalog entry, what step times are predicted
from) and the train stage's step on it, on random tokens: timed, its SDPA kernel observed."""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

from pipeline.core.errors import PipelineError
from pipeline.tools.gpucheck.packages import TORCH_INSTALL

if TYPE_CHECKING:
    from pipeline.core.params import Params

SDPA_OPS = {                  # aten ops of torch.nn.functional.scaled_dot_product_attention's backends
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "mem_efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "fused (overrideable)",
    "_scaled_dot_product_attention_math": "math",
}


@dataclass
class Machine:
    kind: str                       # "cuda" | "cpu"
    name: str
    device: Any                     # pipeline.cost.hardware.Device the micro-batches are planned against
    catalog_entry: str | None       # the catalog entry this machine is (cost.hardware if it is one), or None
    facts: dict[str, Any]
    peak_flops: dict[str, float]    # what step times are predicted from
    mfu: float
    prediction_source: str
    precisions: list[str]
    outside_allocator_bytes: int = 0
    energy: Any = None              # pipeline.engine.meter.EnergyCounter of the GPU, or None


def cuda_machine(params: Params) -> Machine:
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
    entry = hardware.gpu_entry(gpu.name, params.cost.extra_hardware, prefer=params.cost.hardware)
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
        source = (f"no catalog device is a {gpu.name}: the matmul peak measured here x {mfu:g}, the median "
                  "mfu_default of the catalog's GPUs (an assumption)")
    facts = {**asdict(gpu), "bf16_native": gpu.bf16_native, "torch": torch.__version__,
             "measured_matmul_tflops": {p: f / 1e12 for p, f in measured.items()}}
    return Machine(kind="cuda", name=gpu.name, device=device, catalog_entry=entry, facts=facts,
                   peak_flops=dict(peaks), mfu=mfu, prediction_source=source,
                   precisions=["fp16"] + (["bf16"] if gpu.bf16_native else []) + ["fp32"],
                   outside_allocator_bytes=outside,
                   energy=EnergyCounter.of(gpu.index))


def cpu_machine(params: Params) -> Machine:
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


def prime_cuda_libraries(params: Params, machine: Machine) -> None:
    """One throwaway step per precision: cuBLAS and friends allocate their workspaces once, through
    torch's allocator, and would otherwise count against whichever configuration runs first."""
    for precision in machine.precisions:
        RandomTokenSteps.build(params, "cuda", precision, False, 1, 1).timed_step()
    free_device("cuda")


def free_device(kind: str) -> None:
    import torch

    gc.collect()
    if kind == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]
