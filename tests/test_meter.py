"""pipeline.engine.meter: the run's clock and rates, and the one NVML energy counter (found by the
GPU's UUID) that the train stage, the doctor and the GPU check read."""
from __future__ import annotations

import sys
import time
import types

import pytest
import torch

from pipeline.engine.meter import EnergyCounter, Meter
from pipeline.engine.plan import Setup


def cpu_setup(world=1):
    return Setup(device="cpu", world=world, micro_batch_size=1, grad_accum_steps=1, precision="fp32",
                 activation_checkpointing=False, compile=False, device_name="cpu", peak_flops=1e9,
                 calibration_key="cpu|key", settings_from="plan.json")


def test_steps_rates_and_mfu_count_the_steps_alone():
    meter = Meter(cpu_setup(), flops_per_token=1000.0, device=torch.device("cpu"))
    assert meter.tokens_per_second() is None and meter.summary("fp32")["mfu"] is None
    for _ in range(2):
        meter.step_started()
        time.sleep(0.01)
        meter.step_done(100)
    with meter.timed("eval"):
        time.sleep(0.02)
    assert meter.steps == 2 and meter.tokens == 200
    summary = meter.summary("fp32")
    rate = 200 / meter.step_seconds
    assert summary["tokens_per_second"] == rate and meter.last_rate > 0
    assert summary["mfu"] == pytest.approx(rate * 1000.0 / 1e9) and summary["mfu_device"] == "cpu"
    assert summary["seconds"]["eval"] >= 0.02 and summary["seconds"]["steps"] == meter.step_seconds
    assert meter.run_seconds() >= meter.step_seconds + summary["seconds"]["eval"]
    assert summary["peak_memory_kind"] == "process_peak_rss" and summary["peak_memory_bytes"] > 2**20
    assert meter.energy_kwh() is None  # no GPU, no counter


def fake_nvml(monkeypatch, by_uuid_fails=False):
    calls = []

    def by_uuid(uuid):
        calls.append(("uuid", uuid))
        if by_uuid_fails:
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return "board-by-uuid"

    def by_index(index):
        calls.append(("index", index))
        return f"board-{index}"

    energy = {"board-by-uuid": 5000, "board-1": 7000}
    module = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetHandleByUUID=by_uuid,
                                   nvmlDeviceGetHandleByIndex=by_index,
                                   nvmlDeviceGetTotalEnergyConsumption=lambda handle: energy[handle])
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return calls, energy


def test_the_counter_is_found_by_the_gpus_uuid_not_nvmls_numbering(monkeypatch):
    # under CUDA_VISIBLE_DEVICES=1 torch's cuda:0 is NVML's GPU 1: the index would read another board
    calls, energy = fake_nvml(monkeypatch)
    counter = EnergyCounter(0, uuid="1234-abcd")
    assert calls == [("uuid", "GPU-1234-abcd")] and counter.reads and counter.millijoules() == 5000
    energy["board-by-uuid"] = 8600
    assert counter.millijoules() == 8600


def test_without_a_uuid_the_index_is_used(monkeypatch):
    calls, _ = fake_nvml(monkeypatch, by_uuid_fails=True)
    assert EnergyCounter(1, uuid="1234-abcd").millijoules() == 7000
    assert calls == [("uuid", "GPU-1234-abcd"), ("index", 1)]


def test_no_counter_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    counter = EnergyCounter(0)
    assert not counter.reads and counter.millijoules() is None and "pip install nvidia-ml-py" in counter.note
    fake_nvml(monkeypatch)
    sys.modules["pynvml"].nvmlDeviceGetTotalEnergyConsumption = lambda handle: 1 / 0  # a GPU older than Volta
    counter = EnergyCounter(0, uuid="x")
    assert not counter.reads and counter.note.startswith("NVML nvmlDeviceGetTotalEnergyConsumption failed")
