"""What the train stage reports while it runs: progress bar, DVCLive metrics, throughput, MFU,
peak memory, energy. Only the main process writes; the others keep quiet.
"""
from __future__ import annotations

import math
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from dvclive import Live
from tqdm.auto import tqdm

from pipeline.core.params import Params, Train
from pipeline.engine.plan import Setup


class Meter:
    """Wall time, time inside optimizer steps, tokens, peak memory and NVML energy for this run."""

    def __init__(self, params: Params, setup: Setup, vocab_size: int, device: torch.device):
        self.params, self.setup, self.vocab_size, self.device = params, setup, vocab_size, device
        self.started = time.perf_counter()
        self.step_seconds = 0.0  # data windows, forward, backward, optimizer: what tokens/s counts
        self.seconds = {"eval": 0.0, "checkpoint": 0.0, "log": 0.0}  # everything else in the loop
        self.tokens = 0
        self.last_rate = 0.0
        self._t = 0.0
        self._nvml = _NvmlEnergy(device) if setup.device == "cuda" else None

    def step_started(self) -> None:
        self._t = time.perf_counter()

    def step_done(self, tokens: int) -> None:
        # the loss is read back every step, so on a GPU this interval includes the device work
        took = time.perf_counter() - self._t
        self.step_seconds += took
        self.tokens += tokens
        self.last_rate = tokens / took if took > 0 else 0.0

    @contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.seconds[kind] += time.perf_counter() - t

    def run_seconds(self) -> float:
        return time.perf_counter() - self.started

    def run_hours(self) -> float:
        return self.run_seconds() / 3600

    def tokens_per_second(self) -> float | None:
        return self.tokens / self.step_seconds if self.step_seconds else None

    def summary(self, precision: str) -> dict[str, Any]:
        """Throughput, MFU (compute.mfu: model FLOPs, as the estimate counts them) and peak memory."""
        from pipeline.model.compute import flops_per_token, mfu as model_flops_utilization

        rate = self.tokens_per_second()
        mfu = mfu_device = flops = None
        if rate:
            # the plan's device (cost.hardware) and its peak in the planned precision: train
            # refuses a plan made for another kind of device, so that peak is this run's
            flops = flops_per_token(self.params.model, self.vocab_size)
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
        """This process's GPU energy from NVML; None on CPU or where the counter does not read."""
        return self._nvml.kwh() if self._nvml else None


class TrainLog:
    """tqdm on the terminal; DVCLive .tsv files per metric (reports/train_live/plots/metrics)."""

    def __init__(self, directory: Path, main: bool, cfg: Train, start_step: int):
        self.cfg = cfg
        self.live = Live(dir=str(directory), dvcyaml=None, save_dvc_exp=False, report=None) if main else None
        self.bar = tqdm(total=cfg.max_steps, initial=start_step, unit="step", disable=not main, file=sys.stderr,
                        dynamic_ncols=True, mininterval=1 if sys.stderr.isatty() else 30)

    def replay(self, history: dict[str, list[dict[str, Any]]]) -> None:
        """A resumed run's curves start at step 1, as the uninterrupted run's would."""
        for entry in history["train"]:
            self._train_metrics(entry)
        for entry in history["val"]:
            self._val_metrics(entry)

    def train(self, entry: dict[str, Any], meter: Meter) -> None:
        self._train_metrics(entry)
        if self.live:
            self.live.log_metric("train/tokens_per_second", meter.last_rate)
        self.bar.update(1)
        if entry["step"] % self.cfg.log_every == 0:
            loss = f"{entry['loss']:.4f}" if entry["loss"] is not None else "nan"
            self.bar.set_postfix_str(f"loss {loss} lr {entry['lr']:.2e} {meter.last_rate:,.0f} tok/s", refresh=False)

    def val(self, entry: dict[str, Any]) -> None:
        self._val_metrics(entry)
        if self.live:
            self.live.make_summary()
            text = "not finite" if entry["loss"] is None else \
                f"{entry['loss']:.4f} (perplexity {entry['perplexity'] or math.inf:.4g})"
            self.bar.write(f"step {entry['step']}: val loss {text}")

    def note(self, text: str) -> None:
        if self.live:
            self.bar.write(text)

    def done(self, reason: str) -> None:
        if self.live:
            self.bar.write(f"stopped: {reason}")

    def close(self) -> None:
        self.bar.close()
        if self.live:
            self.live.make_summary()

    def _train_metrics(self, entry: dict[str, Any]) -> None:
        if self.live:
            self.live.step = entry["step"]
            for key in ("loss", "lr", "grad_norm"):
                if _finite(entry[key]):
                    self.live.log_metric(f"train/{key}", entry[key])

    def _val_metrics(self, entry: dict[str, Any]) -> None:
        # a diverged run's losses can be huge or infinite: log what is finite, never crash on it
        if self.live:
            self.live.step = entry["step"]
            for key, name in (("loss", "val/loss"), ("perplexity", "val/perplexity")):
                if _finite(entry.get(key)):
                    self.live.log_metric(name, entry[key])


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


class _NvmlEnergy:
    """Board energy from NVML's total-energy counter (Volta and newer); None when unavailable."""

    def __init__(self, device: torch.device):
        self.start = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self.read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # millijoules
            self.start = self.read()
        except Exception:  # no pynvml, no driver, or a GPU without the counter
            self.start = None

    def kwh(self) -> float | None:
        if self.start is None:
            return None
        try:
            return (self.read() - self.start) / 3.6e9
        except Exception:
            return None
