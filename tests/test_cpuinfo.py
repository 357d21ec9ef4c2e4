"""This machine's CPU: facts parsed from /proc and cgroup files (fakes in tmp_path, so the AVX-512/AMX
and container cases run on any machine), the per-machine cache of the matmul peaks, and the
detected `cpu` catalog entry."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cost import cpuinfo, hardware, render
from pipeline.core import params as params_module

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
ZEN3 = """processor\t: 0
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu sse2 avx avx2 fma
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd bf16
"""
FAKE_PEAKS = {"fp32": 1e11, "bf16": 1e12, "fp16": 5e10}


class Calls(list):
    peaks, load = FAKE_PEAKS, 0.5


@pytest.fixture(autouse=True)
def cpu_cache(tmp_path_factory, monkeypatch):
    """One real measurement of this machine per test session, kept out of the user's cache."""
    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cpu-cache"))


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def fake_measure(monkeypatch, tmp_path):
    """Peaks without timing, counted (the next ones: fake_measure.peaks, .load); the cache in tmp_path/cache."""
    calls = Calls()

    def measure(threads, seconds=cpuinfo.SECONDS_PER_PRECISION):
        calls.append(threads)
        return {"peak_flops": dict(calls.peaks), "matmul": {p: {"size": 64, "sizes": [64], "threads": threads}
                                                            for p in cpuinfo.PRECISIONS},
                "torch_cpu_capability": "AVX512", "measured_at": f"call {len(calls)}", "load_average": calls.load}

    monkeypatch.setattr(cpuinfo, "measure_peaks", measure)
    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path / "cache"))
    return calls


# ---- parsing ------------------------------------------------------------------------------------

def test_flags_and_model_of_an_amx_xeon_and_an_avx2_epyc():
    assert cpuinfo.isa_flags(SAPPHIRE_RAPIDS) == ["avx2", "avx512f", "avx512_bf16", "avx512_fp16",
                                                  "amx_tile", "amx_bf16"]
    assert cpuinfo.model_name(SAPPHIRE_RAPIDS) == ("Intel(R) Xeon(R) Platinum 8480+", "/proc/cpuinfo model name")
    assert cpuinfo.isa_flags(ZEN3) == ["avx2"]
    assert cpuinfo.model_name(ZEN3)[0] == "AMD EPYC 7763 64-Core Processor"


def test_model_name_without_cpuinfo_line_comes_from_platform(monkeypatch):
    monkeypatch.setattr(cpuinfo.platform, "processor", lambda: "arm")
    assert cpuinfo.model_name(ARM) == ("arm", "platform.processor()")
    monkeypatch.setattr(cpuinfo.platform, "processor", lambda: "")
    monkeypatch.setattr(cpuinfo.platform, "machine", lambda: "aarch64")
    assert cpuinfo.model_name(ARM) == ("aarch64", "platform.machine()")
    assert cpuinfo.isa_flags(ARM) == []


def test_host_of_a_fake_amx_machine_in_a_cgroup_v2_container(tmp_path, monkeypatch):
    monkeypatch.setattr(cpuinfo, "_affinity", lambda: 8)
    root = write(tmp_path, {"proc/cpuinfo": SAPPHIRE_RAPIDS, "proc/meminfo": "MemTotal: 67108864 kB\n",
                            "proc/self/cgroup": "0::/job\n",
                            "sys/fs/cgroup/job/cpu.max": "150000 100000\n",
                            "sys/fs/cgroup/job/memory.max": f"{8 * GIB}\n"})
    facts = cpuinfo.host(root)
    assert facts["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert facts["cores"] == 2 and "cpu.max" in facts["cores_source"]  # 1.5 CPUs run on 2 threads
    assert facts["memory_bytes"] == 8 * GIB and "memory.max" in facts["memory_source"]
    assert facts["bf16_native"] and facts["fp16_native"]


def test_cgroup_v1_limits_of_the_container_and_its_ancestors(tmp_path):
    # without a cgroup namespace /proc/self/cgroup names the host's path; the mount is the container's
    root = write(tmp_path, {"proc/meminfo": "MemTotal: 33554432 kB\n",
                            "proc/self/cgroup": "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
                            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "250000\n",
                            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
                            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
                            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{4 * GIB}\n"})
    cores, how = cpuinfo.usable_cores(root, available=8)
    assert cores == 3 and "cgroup v1" in how and "cpu.cfs_quota_us" in how
    memory, how = cpuinfo.usable_memory(root)
    assert memory == 4 * GIB and "docker/abc/memory.limit_in_bytes" in how


def test_the_tightest_limit_wins_and_unlimited_cgroups_leave_the_machine(tmp_path):
    root = write(tmp_path, {"proc/meminfo": "MemTotal: 16777216 kB\n", "proc/self/cgroup": "0::/a/b\n",
                            "sys/fs/cgroup/a/memory.max": f"{2 * GIB}\n", "sys/fs/cgroup/a/b/memory.max": "max\n",
                            "sys/fs/cgroup/a/cpu.max": "1600000 100000\n", "sys/fs/cgroup/a/b/cpu.max": "max 100000\n"})
    assert cpuinfo.usable_memory(root)[0] == 2 * GIB       # set on the parent: applies to the child
    assert cpuinfo.usable_cores(root, available=4)[0] == 4  # a 16-CPU quota does not add cores
    unlimited_v1 = write(tmp_path / "v1", {"proc/meminfo": "MemTotal: 16777216 kB\n",
                                           "proc/self/cgroup": "4:memory:/\n",
                                           "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"})
    assert cpuinfo.usable_memory(unlimited_v1)[0] == 16 * GIB  # v1 writes "no limit" as a huge number
    bare = write(tmp_path / "bare", {"proc/meminfo": "MemTotal: 16777216 kB\n"})
    assert cpuinfo.usable_memory(bare) == (16 * GIB, "MemTotal 16.0 GiB; no lower cgroup memory limit")
    assert cpuinfo.usable_cores(bare, available=4) == (4, "4 CPUs in os.sched_getaffinity(0); no cgroup CPU quota")


# ---- cache --------------------------------------------------------------------------------------

def test_second_profile_reads_the_cache(fake_measure, tmp_path):
    first, second = cpuinfo.profile(), cpuinfo.profile()
    assert len(fake_measure) == 1 and first == second
    stored = json.loads(Path(first["cache_file"]).read_text())
    assert Path(first["cache_file"]).parent == tmp_path / "cache"
    assert stored["fingerprint"] == first["fingerprint"] and stored["peak_flops"] == FAKE_PEAKS
    assert first["peak_flops"] == FAKE_PEAKS and first["remeasure"] == cpuinfo.REMEASURE


BROKEN = {"peak_flops": {**FAKE_PEAKS, "bf16": 0}, "matmul": {"fp32": {"size": 64}}, "load_average": None,
          "fingerprint": "another machine's"}


@pytest.mark.parametrize("corrupt", ["{not json", "[]", '{"fingerprint": "x"}', *BROKEN])
def test_a_corrupt_cache_is_measured_again(fake_measure, corrupt):
    path = Path(cpuinfo.profile()["cache_file"])
    if corrupt in BROKEN:  # one field of a written record spoilt
        corrupt = json.dumps({**json.loads(path.read_text()), corrupt: BROKEN[corrupt]})
    path.write_text(corrupt)
    again = cpuinfo.profile()
    assert len(fake_measure) == 2 and again["peak_flops"] == FAKE_PEAKS
    assert json.loads(path.read_text())["measured_at"] == "call 2"


def test_a_changed_fingerprint_or_refresh_measures_again(fake_measure, monkeypatch):
    first = cpuinfo.profile()
    assert cpuinfo.profile(refresh=True)["measured_at"] == "call 2"
    host = cpuinfo.host
    monkeypatch.setattr(cpuinfo, "host", lambda: {**host(), "torch_version": "9.9.9"})
    other = cpuinfo.profile()
    assert len(fake_measure) == 3 and other["fingerprint"] != first["fingerprint"]
    assert other["cache_file"] != first["cache_file"] and Path(first["cache_file"]).is_file()


def test_a_lower_peak_measured_later_never_replaces_a_higher_one(fake_measure, monkeypatch):
    """Contention only lowers a peak: a busy machine's measurement after a quiet one is dropped."""
    monkeypatch.setattr(cpuinfo.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    first = cpuinfo.profile()
    fake_measure.peaks, fake_measure.load = {p: v * 0.7 for p, v in FAKE_PEAKS.items()}, 1.9
    again = cpuinfo.profile(refresh=True)
    assert len(fake_measure) == 2 and again["peak_flops"] == FAKE_PEAKS and again["measured_at"] == "call 1"
    assert json.loads(Path(first["cache_file"]).read_text())["peak_flops"] == FAKE_PEAKS


def test_a_peak_measured_under_load_is_measured_again_on_a_quieter_machine(fake_measure, monkeypatch):
    cores = cpuinfo.host()["cores"]
    step = cpuinfo.LOADED * cores          # how much quieter is worth measuring again
    load = [0.9 * cores]                    # every core busy with something else
    monkeypatch.setattr(cpuinfo.os, "getloadavg", lambda: (load[0], load[0], load[0]))
    fake_measure.peaks, fake_measure.load = {p: v * 0.7 for p, v in FAKE_PEAKS.items()}, load[0]
    busy = cpuinfo.profile()
    assert cpuinfo.under_load(busy["load_average"], cores)
    load[0] -= step / 2                     # quieter, but not by enough
    assert cpuinfo.profile() == busy and len(fake_measure) == 1
    load[0] = fake_measure.load = busy["load_average"] - step * 1.5
    fake_measure.peaks = FAKE_PEAKS
    quiet = cpuinfo.profile()
    assert len(fake_measure) == 2 and quiet["peak_flops"] == FAKE_PEAKS and quiet["quietest_load"] == load[0]
    assert cpuinfo.profile() == quiet and len(fake_measure) == 2   # no quieter than the quietest: cached


def test_cost_md_says_when_the_peak_was_measured_under_load():
    detected = {"load_average": 1.9, "cores": 2, "measured_at": "2026-12-07T04:00:00+00:00",
                "remeasure": cpuinfo.REMEASURE}
    assert "Peak measured under load: the load average was 1.9 on 2 cores" in render._under_load(detected)[0]
    assert render._under_load({**detected, "load_average": 0.1}) == [] and render._under_load(None) == []


def test_an_unwritable_cache_warns_and_still_answers(fake_measure, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path / "file"))
    found = cpuinfo.profile()
    assert found["peak_flops"] == FAKE_PEAKS and found["cache_file"] is None
    assert "could not cache the CPU peaks" in capsys.readouterr().err


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path / "mine"))
    assert cpuinfo.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("BUDGETGPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cpuinfo.cache_dir() == tmp_path / "xdg" / "budgetgpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cpuinfo.cache_dir() == tmp_path / "home" / ".cache" / "budgetgpt"


# ---- measuring and the catalog entry ------------------------------------------------------------

def test_matmul_peak_of_a_given_size():
    run = cpuinfo.matmul_peak("fp32", seconds=0.05, size=64)
    assert run["size"] == 64 and run["sizes"] == [64] and run["flops"] > 1e6


def machine_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                set())


def test_this_machines_peaks_agree_with_its_flags():
    found = cpuinfo.profile()
    peaks = found["peak_flops"]
    assert set(peaks) == set(cpuinfo.PRECISIONS) and all(peaks[p] > 0 for p in peaks)
    assert found["bf16_native"] == bool(cpuinfo.BF16_FLAGS & machine_flags())
    if found["bf16_native"]:
        assert peaks["bf16"] > peaks["fp32"], peaks
    else:  # emulated bf16 runs ~100x below fp32
        assert peaks["bf16"] < peaks["fp32"] / 5, peaks


def test_the_cpu_entry_is_this_machine():
    cpu = hardware.catalog()["cpu"]
    found = cpu.detected
    assert found is not None and Path(found["cache_file"]).is_file()
    expected_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= found["cores"] <= expected_cores
    assert cpu.memory_bytes == found["memory_bytes"] and cpu.bf16_native == found["bf16_native"]
    assert cpu.peak_flops == pytest.approx(found["peak_flops"])
    assert found["model"] in cpu.description and str(found["cores"]) in cpu.description
    assert "measured on this machine" in cpu.sources["peak_tflops"]
    assert found["cache_file"] in cpu.sources["peak_tflops"]
    assert cpu.sources["memory_gib"].startswith("detected: MemTotal")
    assert cpu.mfu_default == 0.5 and "bench.matmul_peak --mfu" in cpu.sources["mfu_default"]
    assert all(device.detected is None for name, device in hardware.catalog().items() if name != "cpu")


def test_overrides_keep_detection_and_a_named_cpu_is_taken_as_written():
    mine = {"description": "my 64-core workstation", "kind": "cpu", "memory_gib": 256, "memory_bandwidth_gbps": 200,
            "peak_tflops": {"fp32": 3.0, "fp16": 0.1, "bf16": 0.1}, "bf16_native": False, "power_watts": 280,
            "usd_per_hour_on_demand": None, "usd_per_hour_spot": None, "colab_units_per_hour": None,
            "mfu_default": 0.4, "runtime_overhead_gib": 0.5, "sources": {"peak_tflops": "vendor"}}
    devices = hardware.catalog({"cpu": {"memory_gib": 8, "power_watts": 65}, "workstation": mine})
    cpu = devices["cpu"]
    assert cpu.memory_bytes == 8 * GIB and cpu.power_watts == 65
    assert cpu.detected is not None and cpu.peak_flops == pytest.approx(cpu.detected["peak_flops"])
    assert "memory_gib" not in cpu.sources  # the detected source would describe a figure no longer used
    workstation = devices["workstation"]
    assert workstation.detected is None and workstation.peak_flops["fp32"] == 3e12
    assert workstation.memory_bytes == 256 * GIB and workstation.description == "my 64-core workstation"


def test_naming_another_device_or_asking_for_help_measures_nothing(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr(cpuinfo, "measure_peaks", refuse)
    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path / "cache"))
    l4 = params_module.load([ROOT / "params.yaml"]).cost.model_copy(update={"hardware": "l4-24gb"})
    assert hardware.get_device(l4).name == "l4-24gb"
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "BUDGETGPT_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0 and not (tmp_path / "cache").exists()
