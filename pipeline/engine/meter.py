"""What a run measures of itself: wall time, time inside the optimizer steps, tokens per second,
MFU against the plan's peak, peak memory, and the GPU's energy.

    meter = Meter(setup, flops_per_token, device)      # the clock starts here
    meter.step_started(); ...; meter.step_done(tokens)
    with meter.timed("eval"): ...
    meter.summary(precision)  # tokens_per_second, mfu, seconds, peak memory: fields of the train report

The energy comes from NVML's total-energy counter (`EnergyCounter`), which the doctor
(pipeline/tools/doctor.py) and the GPU check read too.
"""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from pipeline.engine.plan import Setup
from pipeline.model.compute import mfu as model_flops_utilization


class EnergyCounter:
    """NVML's board energy counter of one GPU: millijoules since the driver loaded (Volta and newer).

    The board is found by its UUID, as torch reports it: NVML numbers GPUs in PCI order and ignores
    CUDA_VISIBLE_DEVICES (which SLURM and container runtimes set), so NVML's GPU N may be another
    board than torch's cuda:N. The index is the fallback where torch reports no UUID.
    """

    def __init__(self, index: int, uuid: Any = None):
        self.handle, self.note = None, ""
        try:
            import pynvml
        except ImportError:
            self.note = "pynvml is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            self.handle = _nvml_handle(pynvml, index, uuid)
            self._read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self._read()
        except Exception as exc:  # no driver, or a GPU without the counter (older than Volta)
            self.handle, self.note = None, f"NVML nvmlDeviceGetTotalEnergyConsumption failed: {exc}"

    @classmethod
    def of(cls, index: int) -> EnergyCounter:
        """The counter of torch's CUDA device `index`."""
        return cls(index, uuid=getattr(torch.cuda.get_device_properties(index), "uuid", None))

    @property
    def reads(self) -> bool:
        return self.handle is not None

    def millijoules(self) -> int | None:
        if self.handle is None:
            return None
        try:
            return int(self._read())
        except Exception:
            return None


def _nvml_handle(pynvml: Any, index: int, uuid: Any) -> Any:
    if uuid:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except Exception:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class Meter:
    """This process's clock and counters, from the moment the trainer was built."""

    def __init__(self, setup: Setup, flops_per_token: float, device: torch.device):
        self.setup, self.flops_per_token, self.device = setup, flops_per_token, device
        self.started = time.perf_counter()
        self.step_seconds = 0.0  # data windows, forward, backward, optimizer: what tokens/s counts
        self.seconds = {"eval": 0.0, "checkpoint": 0.0, "log": 0.0}  # everything else in the loop
        self.times = dict.fromkeys(self.seconds, 0)                  # how many of each
        self.steps = 0  # done by this process
        self.tokens = 0
        self.last_rate = 0.0
        self._step_began = 0.0
        if setup.device == "cuda":
            self.energy = EnergyCounter.of(device.index if device.index is not None else torch.cuda.current_device())
            self._energy_at_start = self.energy.millijoules()
        else:
            self.energy, self._energy_at_start = None, None

    def step_started(self) -> None:
        self._step_began = time.perf_counter()

    def step_done(self, tokens: int) -> None:
        # the loss is read back every step, so on a GPU this interval includes the device work
        took = time.perf_counter() - self._step_began
        self.step_seconds += took
        self.steps += 1
        self.tokens += tokens
        self.last_rate = tokens / took if took > 0 else 0.0

    @contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.seconds[kind] += time.perf_counter() - t
        self.times[kind] += 1

    def mean_seconds(self, kind: str) -> float | None:
        """The mean time one `kind` took in this run (a checkpoint: the Young/Daly checkpoint cost)."""
        return self.seconds[kind] / self.times[kind] if self.times[kind] else None

    def run_seconds(self) -> float:
        return time.perf_counter() - self.started

    def run_hours(self) -> float:
        return self.run_seconds() / 3600

    def tokens_per_second(self) -> float | None:
        return self.tokens / self.step_seconds if self.step_seconds else None

    def summary(self, precision: str) -> dict[str, Any]:
        """Throughput, MFU (compute.mfu: model FLOPs, as the estimate counts them) and peak memory."""
        rate = self.tokens_per_second()
        mfu = mfu_device = flops = None
        if rate:
            # the plan's device (cost.hardware) and its peak in the planned precision: train
            # refuses a plan made for another kind of device, so that peak is this run's
            flops = self.flops_per_token
            mfu = model_flops_utilization(rate, flops, self.setup.peak_flops, self.setup.world)
            mfu_device = self.setup.device_name
        if self.setup.device == "cuda":
            peak_memory, kind = torch.cuda.max_memory_allocated(self.device), "cuda_max_memory_allocated"
        else:
            # Linux reports ru_maxrss in KiB; this is the whole process, not just tensors
            peak_memory, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"
        return {
            "tokens_per_second": rate,
            "this_run_hours": self.run_hours(),
            "seconds": {"steps": self.step_seconds, **self.seconds},
            "mfu": mfu,
            "mfu_device": mfu_device,
            "flops_per_token": flops,
            "peak_memory_bytes": peak_memory,
            "peak_memory_kind": kind,
        }

    def energy_kwh(self) -> float | None:
        """This process's GPU energy since the meter started; None on CPU or where the counter does not read."""
        now = self.energy.millijoules() if self.energy else None
        if now is None or self._energy_at_start is None:
            return None
        return (now - self._energy_at_start) / 3.6e9
