"""The verdict (what would break a run, what to note) and reports/gpu-check.md and .json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.units import GIB
from pipeline.tools.gpucheck.configs import ACCUM
from pipeline.tools.gpucheck.plans import PLAN_STEPS


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
