"""This machine's CPU as a training device: what it is, what this process may use, how fast it multiplies.

    profile()                  # the cpu catalog entry's facts, peaks measured once per machine and cached
    profile(refresh=True)      # measure again (a lower peak never replaces a higher one)
    python -m pipeline.cost.cpuinfo [--refresh]   # print them (and measure again)

Facts are read on every call (cheap): the model name and ISA flags from /proc/cpuinfo, the cores
from the CPU affinity capped by the cgroup CPU quota, the memory from /proc/meminfo capped by the
cgroup memory limit. The matmul peaks take a few seconds, so they are cached in a JSON file outside
the repository ($BUDGETGPT_CACHE_DIR, else $XDG_CACHE_HOME/budgetgpt, else ~/.cache/budgetgpt),
named by a fingerprint of what sets them: the model, the flags, the cores and the torch version.

Other processes on the cores can only lower a measured peak, never raise it: the cache keeps the
highest measurement, and measures again when the machine is quieter than it was at the quietest
measurement so far by a quarter of its cores (LOADED), so that one taken on a busy machine does
not price every later run on it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.core import atomic
from pipeline.core.cache import cache_dir

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
FP16_FLAGS = {"avx512_fp16", "amx_fp16"}
PRECISIONS = ("fp32", "bf16", "fp16")
REMEASURE = "python -m pipeline.cost.cpuinfo --refresh"
SECONDS_PER_PRECISION = 1.0
MIN_REPEATS = 3
MAX_SIZE = 8192
CACHED_TYPES = {"fingerprint": str, "torch_cpu_capability": str, "measured_at": str, "load_average": (int, float),
                "quietest_load": (int, float)}
# The 1-minute load average per usable core from which a measurement counts as taken under load,
# and by which a quieter machine is worth measuring again.
LOADED = 0.25


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# ---- facts --------------------------------------------------------------------------------------

def model_name(cpuinfo: str) -> tuple[str, str]:
    """(name, where it came from): /proc/cpuinfo's first "model name", else what platform says."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip(), "/proc/cpuinfo model name"
    if platform.processor():
        return platform.processor(), "platform.processor()"
    return platform.machine(), "platform.machine()"


def isa_flags(cpuinfo: str) -> list[str]:
    """The ISA_FLAGS that the first processor's "flags" line lists (all cores share one ISA)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            present = set(value.split())
            return [flag for flag in ISA_FLAGS if flag in present]
    return []


def _cgroup_dirs(root: Path, controller: str) -> list[Path]:
    """This process's cgroup directory for `controller` ("" = cgroup v2) and every ancestor that
    exists: a limit set on an ancestor applies too. Walking up also finds the container's own
    cgroup when /proc/self/cgroup names a host path that is not mounted inside the container."""
    for line in _read(root / "proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            base = root / "sys/fs/cgroup" / controller
            rel = PurePosixPath(path.lstrip("/"))
            return [base / d for d in (rel, *rel.parents) if (base / d).is_dir()]
    return []


def _cpu_quotas(root: Path) -> list[tuple[float, str]]:
    """(CPUs, file) for each CPU quota on this process's cgroups, v2 cpu.max and v1 CFS."""
    quotas = []
    for d in _cgroup_dirs(root, ""):
        fields = _read(d / "cpu.max").split()
        if len(fields) == 2 and fields[0] != "max":
            quotas.append((int(fields[0]) / int(fields[1]), f"cgroup v2 {d / 'cpu.max'}"))
    for d in _cgroup_dirs(root, "cpu"):
        quota, period = _read(d / "cpu.cfs_quota_us").strip(), _read(d / "cpu.cfs_period_us").strip()
        if quota and period and int(quota) > 0:
            quotas.append((int(quota) / int(period), f"cgroup v1 {d / 'cpu.cfs_quota_us'}"))
    return quotas


def usable_cores(root: Path, available: int) -> tuple[int, str]:
    """(cores, how): `available` CPUs of the affinity mask, capped by the tightest cgroup quota.

    A fractional quota rounds up, as the JVM and Go runtimes do: 1.5 CPUs run 2 threads, throttled."""
    where = f"{available} CPUs in os.sched_getaffinity(0)"
    quotas = _cpu_quotas(root)
    if not quotas:
        return available, f"{where}; no cgroup CPU quota"
    cpus, source = min(quotas)
    cores = min(available, math.ceil(cpus))
    return cores, f"{where}, capped by {cpus:g} CPUs of the quota in {source}: {cores}"


def _memory_limits(root: Path) -> list[tuple[int, str]]:
    """(bytes, file) for each memory limit on this process's cgroups, v2 memory.max and v1."""
    limits = []
    for d in _cgroup_dirs(root, ""):
        text = _read(d / "memory.max").strip()
        if text and text != "max":
            limits.append((int(text), f"cgroup v2 {d / 'memory.max'}"))
    for d in _cgroup_dirs(root, "memory"):
        text = _read(d / "memory.limit_in_bytes").strip()
        if text:
            limits.append((int(text), f"cgroup v1 {d / 'memory.limit_in_bytes'}"))
    return limits


def _mem_total(root: Path) -> int:
    for line in _read(root / "proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # no /proc (macOS)


def usable_memory(root: Path) -> tuple[int, str]:
    """(bytes, how): MemTotal, capped by the tightest cgroup memory limit.

    The most this process could allocate, not MemAvailable: that is a snapshot of what other
    processes hold at the moment the estimate runs, which would make the estimate (a cached
    pipeline stage) change from run to run; cost.memory_headroom keeps a share free instead."""
    total = _mem_total(root)
    where = f"MemTotal {total / 2**30:.1f} GiB"
    limits = [(limit, source) for limit, source in _memory_limits(root) if limit < total]
    if not limits:
        return total, f"{where}; no lower cgroup memory limit"
    limit, source = min(limits)
    return limit, f"{where}, capped by the cgroup limit in {source}: {limit / 2**30:.1f} GiB"


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # no affinity masks (macOS)


def host(root: Path = Path("/")) -> dict[str, Any]:
    """What this machine is and what this process may use of it; `root` is "/" but for tests."""
    cpuinfo = _read(root / "proc/cpuinfo")
    model, model_source = model_name(cpuinfo)
    cores, cores_source = usable_cores(root, _affinity())
    memory, memory_source = usable_memory(root)
    flags = isa_flags(cpuinfo)
    return {"model": model, "model_source": model_source, "cores": cores, "cores_source": cores_source,
            "memory_bytes": memory, "memory_source": memory_source,
            "flags": flags, "flags_source": "/proc/cpuinfo flags",
            "bf16_native": bool(BF16_FLAGS & set(flags)), "fp16_native": bool(FP16_FLAGS & set(flags)),
            "torch_version": version("torch")}


# ---- peaks --------------------------------------------------------------------------------------

def _fastest(precision: str, size: int, repeats: int, until: float = 0.0) -> float:
    """FLOP/s of the fastest of `repeats` size x size matmuls, or of as many as run until `until`."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    best, count = math.inf, 0
    while count < repeats or time.perf_counter() < until:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
        count += 1
    return 2 * size**3 / best


def matmul_peak(precision: str, *, seconds: float = SECONDS_PER_PRECISION,
                size: int | None = None) -> dict[str, Any]:
    """Dense FLOP/s of square matmuls in `precision` on torch's current threads: the fastest matmul.

    Without `size`, sizes double from 128 while the next one would take under a quarter of
    `seconds` (each timed twice: a new shape's first call may set up kernels): large enough to
    fill the cores, small enough that an emulated bf16 (~100x slower than fp32) never runs long.
    The last size then repeats for `seconds` (at least MIN_REPEATS times). The fastest size wins:
    a mid size can beat the largest, whose matrices no longer fit the caches."""
    rates = {}
    _fastest(precision, size or 128, 1)  # the first call pays for library set-up and kernel JIT
    if size is None:
        size = 128
        rates[size] = _fastest(precision, size, 2)
        while 2 * size**3 / rates[size] * 8 < seconds / 4 and size < MAX_SIZE:
            size *= 2
            rates[size] = _fastest(precision, size, 2)
    rate = _fastest(precision, size, MIN_REPEATS, until=time.perf_counter() + seconds)
    rates[size] = max(rate, rates.get(size, 0.0))
    fastest = max(rates, key=rates.__getitem__)
    return {"flops": rates[fastest], "size": fastest, "sizes": sorted(rates)}


def measure_peaks(threads: int, seconds: float = SECONDS_PER_PRECISION) -> dict[str, Any]:
    """Every precision's matmul peak on `threads` threads (torch's setting is restored after)."""
    import torch

    load = os.getloadavg()[0]   # before the matmuls, which raise it themselves
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = {p: matmul_peak(p, seconds=seconds) for p in PRECISIONS}
    finally:
        torch.set_num_threads(before)
    return {"peak_flops": {p: run["flops"] for p, run in runs.items()},
            "matmul": {p: {"size": run["size"], "sizes": run["sizes"], "threads": threads}
                       for p, run in runs.items()},
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            # other processes on these cores lower the peaks: the record says how busy they were
            "load_average": round(load, 2)}


# ---- cache --------------------------------------------------------------------------------------


def fingerprint(facts: dict[str, Any]) -> str:
    """What sets the peaks; memory does not, so a new memory limit reuses them."""
    key = [facts["model"], facts["flags"], facts["cores"], facts["torch_version"]]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def _cached(path: Path, key: str) -> dict[str, Any] | None:
    """The measurement stored at `path` for `key`, or None when absent, corrupt or someone else's."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        valid = (stored["fingerprint"] == key
                 and all(isinstance(stored[name], kind) for name, kind in CACHED_TYPES.items())
                 and all(isinstance(stored["peak_flops"][p], (int, float)) and stored["peak_flops"][p] > 0
                         and isinstance(stored["matmul"][p]["size"], int) for p in PRECISIONS))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stored if valid else None


def profile(*, refresh: bool = False) -> dict[str, Any]:
    """host() plus the matmul peaks (measured, or read from this machine's cache), the cache file
    (None where it could not be written) and the command that measures again. JSON-ready: reports
    record it as it is."""
    facts = host()
    key = fingerprint(facts)
    path = cache_dir() / f"cpu-{key}.json"
    measured = _cached(path, key)
    if refresh or measured is None or _quieter_now(measured, facts["cores"]):
        fresh = {"fingerprint": key, **measure_peaks(facts["cores"])}
        # read again: an estimate running beside this one may have measured meanwhile
        measured = kept(_cached(path, key), fresh)
        try:
            atomic.write_json(path, measured)
        except OSError as exc:  # a read-only home still gets its estimate, measured each time
            print(f"warning: could not cache the CPU peaks in {path}: {exc}", file=sys.stderr)
            path = None
    return {**facts, **measured, "cache_file": str(path) if path else None, "remeasure": REMEASURE}


def kept(cached: dict[str, Any] | None, fresh: dict[str, Any]) -> dict[str, Any]:
    """The measurement with the higher fp32 peak (what a CPU run is planned in), the fresh one on a
    tie, with the lowest load any measurement was taken at."""
    if cached is None:
        return {**fresh, "quietest_load": fresh["load_average"]}
    best = fresh if fresh["peak_flops"]["fp32"] >= cached["peak_flops"]["fp32"] else cached
    return {**best, "quietest_load": min(cached["quietest_load"], fresh["load_average"])}


def under_load(load_average: float, cores: int) -> bool:
    return load_average >= LOADED * cores


def _quieter_now(cached: dict[str, Any], cores: int) -> bool:
    return cached["quietest_load"] - os.getloadavg()[0] >= LOADED * cores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refresh", action="store_true", help="measure the peaks again, ignoring the cache")
    print(json.dumps(profile(refresh=parser.parse_args(argv).refresh), indent=2))


if __name__ == "__main__":
    main()
