"""Before paying for a run: is this machine ready for it?

    python -m pipeline doctor [--params FILE ...] [--set KEY=VALUE ...]

Run it on the machine that will train. It reports the CPU (the detected `cpu` catalog entry),
every CUDA device torch sees (memory, native bf16, driver, NVML's energy counter), the NVIDIA
driver nvidia-smi reports against what the torch build needs (pipeline/tools/cudabuilds.py: a
driver too old is why torch sees no GPU, and is said so), the free disk
under paths.checkpoints against what the kept checkpoints will need, and whether cost.hardware
describes this machine. Every problem is listed at once; the exit status is 2 when the run would
fail here, 0 otherwise (warnings allowed).

`run(params)` returns the Report; `cuda_devices()` is shared with the GPU check
(pipeline/tools/gpucheck/). Both know a GPU's catalog device by the names the device lists
(gpu_names in pipeline/cost/hardware.yaml), under any of its offers; the energy counter is the
train stage's (pipeline/engine/meter.py: EnergyCounter). Importing this module is cheap: torch
and the catalog are imported when a check runs.
"""
from __future__ import annotations

import argparse
import platform
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params

from pipeline.core.units import GIB  # noqa: E402
from pipeline.model.compute import CHECKPOINT_SMALL_FILES_BYTES  # noqa: E402,F401  (tests read it here)
TORCH_INSTALL = "https://pytorch.org/get-started/locally/"
NO_ENTRY = ("add a device to pipeline/cost/hardware.yaml with the name under gpu_names, or describe it under "
            "cost.extra_hardware")


# ---- facts about the CUDA devices -----------------------------------------------------------------

@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    capability: tuple[int, int]
    total_bytes: int
    free_bytes: int
    cuda_version: str | None        # torch.version.cuda: the CUDA runtime torch was built with
    driver_version: str | None      # NVML's, None without pynvml
    energy_counter: bool            # NVML nvmlDeviceGetTotalEnergyConsumption reads
    energy_note: str                # why it does not, or ""
    arch_list: tuple[str, ...] = ()  # torch.cuda.get_arch_list(): the GPU code in this torch build

    @property
    def bf16_native(self) -> bool:
        # Ampere and newer have bf16 tensor cores; torch.cuda.is_bf16_supported() also says True
        # on a Turing T4, where bf16 runs emulated at about the fp32 rate
        return self.capability[0] >= 8

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"


def cuda_devices() -> list[CudaDevice]:
    """Every CUDA device torch sees, as facts; [] without one."""
    import torch

    from pipeline.engine.meter import EnergyCounter

    if not torch.cuda.is_available():
        return []
    driver = nvml_driver_version()
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        counter = EnergyCounter.of(index)
        found.append(CudaDevice(index=index, name=props.name, capability=(props.major, props.minor),
                                total_bytes=total, free_bytes=free, cuda_version=torch.version.cuda,
                                driver_version=driver, energy_counter=counter.reads, energy_note=counter.note,
                                arch_list=tuple(torch.cuda.get_arch_list())))
    return found


def nvml_driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no pynvml, or no driver it can talk to
        return None




def arch_supported(gpu: CudaDevice) -> bool:
    """Whether this torch build carries code for the GPU: a binary for the same major version and
    an equal or lower minor (sm_86 runs sm_80 code), or PTX of a lower or equal capability that
    the driver compiles (CUDA C++ Programming Guide, "Binary Compatibility", "PTX Compatibility")."""
    if not gpu.arch_list:
        return True  # unknown: no claim
    major, minor = gpu.capability
    for arch in gpu.arch_list:
        kind, _, number = arch.partition("_")
        digits = re.match(r"\d+", number)
        if not digits:
            continue
        value = int(digits.group())
        arch_major, arch_minor = divmod(value, 10)
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


# ---- the report -----------------------------------------------------------------------------------

@dataclass
class Report:
    sections: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, section: str, line: str) -> None:
        self.sections.setdefault(section, []).append(line)

    @property
    def exit_code(self) -> int:
        return 2 if self.problems else 0

    def text(self) -> str:
        out = []
        for title, lines in self.sections.items():
            out += [f"{title}:"] + [f"  {line}" for line in lines] + [""]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"problem: {p}" for p in self.problems]
        verdict = (f"doctor: {len(self.problems)} problem(s): this run would fail here; fix them and run "
                   "python -m pipeline doctor again" if self.problems else
                   "doctor: ready" + (f" ({len(self.warnings)} warning(s))" if self.warnings else ""))
        return "\n".join(out + [verdict]) + "\n"


def run(params: Params, *, find_cuda: Callable[[], list[CudaDevice]] = cuda_devices) -> Report:
    """Every check, on this machine; `find_cuda` is replaceable so tests can describe GPUs."""
    report = Report()
    gpus = find_cuda()
    _software(report)
    driver_too_old = _driver(report)
    _cpu(report, params)
    _gpus(report, params, gpus)
    vocab = vocab_size(params, report)
    _disk(report, params, vocab)
    _target(report, params, gpus, vocab, driver_too_old)
    return report


def vocab_size(params: Params, report: Report | None = None) -> int:
    """The token manifest's vocabulary when tokenize has run, else tokenizer.vocab_size."""
    from pipeline.data.tokens import MANIFEST_FILE, TokenManifest

    path = Path(params.paths.tokens) / MANIFEST_FILE
    if path.is_file():
        try:
            return TokenManifest.read(path).vocab_size
        except PipelineError as exc:
            if report:
                report.warnings.append(f"{exc}; sizing with tokenizer.vocab_size {params.tokenizer.vocab_size}")
    return params.tokenizer.vocab_size


def _software(report: Report) -> None:
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    report.add("software", f"Python {platform.python_version()}, torch {torch.__version__} ({build})")
    if not torch.version.cuda and Path("/dev/nvidiactl").exists() and not shutil.which("nvidia-smi"):
        report.warnings.append(f"an NVIDIA driver is present but torch {torch.__version__} is a CPU-only build: "
                               f"install a CUDA build of torch ({TORCH_INSTALL})")


def _driver(report: Report) -> bool:
    """The driver nvidia-smi reports (NVML's where there is no nvidia-smi) against the CUDA version
    of the installed torch, or, for a CPU-only torch, of the CUDA build the lock installs on a GPU
    host. True when it is too old: then that, not the device settings, is why torch sees no GPU."""
    import torch

    from pipeline.tools import cudabuilds

    found = cudabuilds.nvidia_smi()
    if not found:
        nvml = nvml_driver_version()
        found = [("read by NVML", nvml)] if nvml else None
    if not found:
        return False
    gpu, driver = found[0]
    if torch.version.cuda:
        version, cuda, build = torch.__version__.split("+")[0], torch.version.cuda, "this torch build"
    else:
        version = cudabuilds.pinned_torch()
        cuda, build = cudabuilds.cuda_of(version, "pypi"), "the CUDA build requirements.lock installs on a GPU host"
    report.add("driver", f"NVIDIA driver {driver} ({gpu}); {build} is for CUDA {cuda}")
    problem = cudabuilds.driver_problem(gpu, driver, version, cuda)
    if problem:
        report.problems.append(problem)
    if not torch.version.cuda:
        report.warnings.append(f"an NVIDIA driver is present but torch {torch.__version__} is a CPU-only build: "
                               f"install a CUDA build of torch ({TORCH_INSTALL})")
    return problem is not None


def _cpu(report: Report, params: Params) -> None:
    from pipeline.cost import hardware

    cpu = hardware.get_device(params.cost.model_copy(update={"hardware": "cpu"}))
    found = cpu.detected
    if found is None:  # cost.extra_hardware.cpu gives every detected field
        report.add("cpu", f"{cpu.description} (from cost.extra_hardware.cpu), {cpu.memory_bytes / GIB:.1f} GiB, "
                          f"bf16 {'native' if cpu.bf16_native else 'not native'}")
        return
    peaks = ", ".join(f"{p} {f / 1e12:.2f}" for p, f in found["peak_flops"].items())
    cached = f"cached in {found['cache_file']}" if found["cache_file"] else "not cached"
    report.add("cpu", f"{found['model']}, {found['cores']} cores usable ({found['cores_source']})")
    report.add("cpu", f"memory {found['memory_bytes'] / GIB:.1f} GiB ({found['memory_source']})")
    report.add("cpu", f"ISA flags: {' '.join(found['flags']) or 'none of interest'}; bf16 "
                      f"{'native' if found['bf16_native'] else 'not native (the plan stays fp32)'}")
    report.add("cpu", f"measured matmul peaks, TFLOP/s: {peaks} (at {found['measured_at']}, load average "
                      f"{found['load_average']:g}; {cached}; `{found['remeasure']}` measures again)")


def _gpus(report: Report, params: Params, gpus: list[CudaDevice]) -> None:
    from pipeline.cost import hardware

    if not gpus:
        report.add("cuda", "no CUDA device (torch.cuda.is_available() is False)")
        return
    for gpu in gpus:
        offers = hardware.gpu_offers(gpu.name, params.cost.extra_hardware)
        report.add("cuda", f"cuda:{gpu.index} {gpu.name} is catalog device {_chip(offers)}, "
                           f"cost.hardware {' or '.join(offers)}" if offers else
                           f"cuda:{gpu.index} {gpu.name} is no catalog device: {NO_ENTRY}")
        bf16 = "bf16 native" if gpu.bf16_native else \
            "bf16 emulated (compute capability < 8.0; torch.cuda.is_bf16_supported() may still say True): fp16 + loss scaling"
        energy = "NVML energy counter reads" if gpu.energy_counter else f"no NVML energy ({gpu.energy_note})"
        report.add("cuda", f"cuda:{gpu.index} {gpu.name}, compute capability {gpu.capability[0]}.{gpu.capability[1]}, "
                           f"{gpu.free_bytes / GIB:.2f} of {gpu.total_bytes / GIB:.2f} GiB free, {bf16}")
        report.add("cuda", f"cuda:{gpu.index} CUDA runtime {gpu.cuda_version} (torch.version.cuda), driver "
                           f"{gpu.driver_version or 'unknown (pynvml not importable)'}, {energy}")
        if not arch_supported(gpu):
            report.problems.append(f"cuda:{gpu.index} {gpu.name} is {gpu.sm} but this torch build has code for "
                                   f"{' '.join(gpu.arch_list)} only: install a torch build for it ({TORCH_INSTALL})")
        if not gpu.energy_counter:
            report.warnings.append(f"cuda:{gpu.index}: {gpu.energy_note}: the train report will have no measured kWh")


def _chip(offers: dict[str, Any]) -> str:
    """The catalog device the entries `offers` (hardware.gpu_offers) rent: one device's."""
    return next(iter(offers.values())).chip


def checkpoint_parts(params: Params, vocab: int) -> dict[str, int]:
    from pipeline.model import compute

    return compute.checkpoint_parts(params.model, vocab, params.train.optimizer)


def checkpoint_bytes(params: Params, vocab: int) -> int:
    from pipeline.model import compute

    return compute.checkpoint_bytes(params.model, vocab, params.train.optimizer)


def _disk(report: Report, params: Params, vocab: int) -> None:
    from pipeline.engine import checkpoint

    root = Path(params.paths.checkpoints)
    parts = checkpoint_parts(params, vocab)
    each = checkpoint_bytes(params, vocab)
    kept = params.train.keep_last + 2       # the newest keep_last, the best, and the one being written
    needed = kept * each
    held = sum(checkpoint.disk_bytes(path) for _, path in checkpoint.steps(root))
    margin = checkpoint.SPACE_MARGIN_BYTES + int(each * checkpoint.SPACE_MARGIN_FRACTION)  # as save() asks
    more = max(0, needed - held) + margin
    free = checkpoint.free_bytes(root)
    report.add("disk", f"paths.checkpoints {root}, on the disk holding {_nearest_existing(root)}: "
                       f"{checkpoint.human_bytes(free)} free; "
                       f"the kept checkpoints need about {checkpoint.human_bytes(needed)}: train.keep_last "
                       f"{params.train.keep_last} + 1 best + 1 being written, {checkpoint.human_bytes(each)} each "
                       f"(fp32 weights {checkpoint.human_bytes(parts['weights'])} + train.optimizer "
                       f"{params.train.optimizer}'s state {checkpoint.human_bytes(parts['optimizer'])})"
                       + (f"; {checkpoint.human_bytes(held)} already held there" if held else ""))
    if free < more:
        report.problems.append(
            f"paths.checkpoints ({root}): the checkpoints need {more / GIB:.2f} GiB free but the disk holding "
            f"{_nearest_existing(root)} has {free / GIB:.2f} GiB: free {(more - free) / GIB:.2f} GiB, lower "
            f"train.keep_last ({checkpoint.human_bytes(each)} per checkpoint), or set paths.checkpoints to a bigger disk")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# ---- does cost.hardware describe this machine? --------------------------------------------------------

def _target(report: Report, params: Params, gpus: list[CudaDevice], vocab: int, driver_too_old: bool) -> None:
    from pipeline.cost import hardware
    from pipeline.engine.plan import resolve_device

    try:
        target = hardware.get_device(params.cost)
    except PipelineError as exc:
        report.problems.append(str(exc))
        return
    report.add("run", f"cost.hardware {target.name}: {target.kind}, {target.memory_bytes / GIB:.2f} GiB "
                      f"({target.description})")
    try:
        here = resolve_device(params.train.device)
    except PipelineError as exc:
        if not driver_too_old:  # else the driver is why torch sees no GPU, and said so
            report.problems.append(str(exc))
        here = None
    if here:
        report.add("run", f"train.device {params.train.device} resolves to {here} here")
    if here and here != target.kind and not (driver_too_old and target.kind == "cuda"):
        report.problems.append(_kind_mismatch(params, target, here, gpus))
    fit = _plan_fits(report, params, target, vocab)
    if fit and target.kind == "cuda" and here == "cuda":
        _gpu_matches(report, params, target, gpus, fit)


def _kind_mismatch(params: Params, target: Any, here: str, gpus: list[CudaDevice]) -> str:
    from pipeline.cost import hardware

    name, device = target.name, params.train.device
    if target.kind == "cuda":
        why = "train.device is cpu" if device == "cpu" else "torch sees no CUDA GPU"
        return (f"cost.hardware is {name}, a CUDA GPU, but train.device {device} resolves to cpu on this machine "
                f"({why}): to train on this CPU set cost.hardware: cpu (--set cost.hardware=cpu, as "
                "params/demo.yaml does) and rerun estimate; or run on a machine with the GPU")
    offers = hardware.gpu_offers(gpus[0].name, params.cost.extra_hardware) if gpus else {}
    entry = " or ".join(offers) or f"this GPU's entry ({NO_ENTRY})"
    return (f"cost.hardware is {name}, a CPU, but train.device {device} resolves to cuda here "
            f"({gpus[0].name if gpus else 'a GPU'}): set train.device: cpu to train on the CPU, or "
            f"cost.hardware: {entry} and rerun estimate")


def _plan_fits(report: Report, params: Params, target: Any, vocab: int) -> Any:
    from pipeline.cost import planner as plan
    from pipeline.engine.plan import resolve_device

    try:
        fit = plan.plan_for(params, target, vocab)
    except PipelineError as exc:
        report.problems.append(str(exc))
        return None
    report.add("run", f"plan for {target.name}: {plan.describe(fit.plan)}, needs {fit.memory.total / GIB:.2f} GiB "
                      f"of {fit.usable_bytes / GIB:.2f} GiB usable (compute.training_memory)")
    if not fit.fits:
        report.problems.append(plan.fit_error(fit, target, params) + ": the estimate stage will stop; "
                               "python -m pipeline estimate shows the options")
    return fit


def _gpu_matches(report: Report, params: Params, target: Any, gpus: list[CudaDevice], fit: Any) -> None:
    wanted = params.cost.num_devices
    if len(gpus) < wanted:
        report.problems.append(f"cost.num_devices is {wanted} but torch sees {len(gpus)} CUDA device(s) here: "
                               f"set cost.num_devices: {len(gpus)} and rerun estimate")
    for gpu in gpus[:wanted]:
        _one_gpu_matches(report, params, target, gpu, fit)


def _one_gpu_matches(report: Report, params: Params, target: Any, gpu: CudaDevice, fit: Any) -> None:
    from pipeline.cost import hardware

    need, usable_here = fit.memory.total, int(gpu.total_bytes * (1 - params.cost.memory_headroom))
    offers = hardware.gpu_offers(gpu.name, params.cost.extra_hardware)
    match = " or ".join(offers)
    if offers and target.name not in offers:
        report.warnings.append(f"cuda:{gpu.index} {gpu.name} looks like catalog device {_chip(offers)}, "
                               f"but cost.hardware is {target.name}: hours and dollars are estimated for "
                               f"{target.name}; set cost.hardware: {match} to estimate for this GPU")
    if gpu.total_bytes < target.memory_bytes:
        smaller = (f"cuda:{gpu.index} {gpu.name} has {gpu.total_bytes / GIB:.2f} GiB, less than the "
                   f"{target.memory_bytes / GIB:.2f} GiB cost.hardware {target.name} plans for")
        if need > usable_here:
            report.problems.append(f"{smaller}, and the plan needs {need / GIB:.2f} GiB of the "
                                   f"{usable_here / GIB:.2f} GiB usable here: set cost.hardware to this GPU "
                                   f"({match or 'describe it under cost.extra_hardware'}) and rerun estimate")
        else:
            report.warnings.append(f"{smaller}; the plan ({need / GIB:.2f} GiB) still fits")
    elif need > gpu.free_bytes:
        report.warnings.append(f"cuda:{gpu.index}: the plan needs {need / GIB:.2f} GiB but only "
                               f"{gpu.free_bytes / GIB:.2f} GiB is free now: other processes hold the rest "
                               "(nvidia-smi lists them)")
    if params.train.compile and gpu.capability[0] < 8:
        report.problems.append(f"train.compile: true but cuda:{gpu.index} {gpu.name} is compute capability "
                               f"{gpu.capability[0]}.{gpu.capability[1]}; torch.compile's Triton kernels need 8.0 "
                               "or newer: set train.compile: false")
    if fit.plan.precision == "bf16" and not gpu.bf16_native:
        report.problems.append(f"the plan trains in bf16 but cuda:{gpu.index} {gpu.name} (compute capability "
                               f"{gpu.capability[0]}.{gpu.capability[1]}) has no native bf16: set cost.hardware to "
                               "this GPU (fp16 + loss scaling) and rerun estimate")


# ---- the command ------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond --params and --set: doctor checks the run those describe."""


def main(params: Params, args: argparse.Namespace) -> int:
    report = run(params)
    print(report.text(), end="")
    return report.exit_code
