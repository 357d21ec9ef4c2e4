"""The estimate stage: FLOPs, a memory plan, hours, dollars, energy, and the budget gate.

    python -m pipeline estimate [--set cost.hardware=rtx2050-laptop-4gb] [--set cost.calibrate=true]

Reads data/tokens/manifest.json (checked against data/tokenizer/tokenizer.json). Writes
reports/plan.json (the plan alone, read by train), reports/cost.json (DVC metrics) and
reports/cost.md (for people, with a what-if table over the catalog). Over budget, or when no plan
fits in memory, it raises BudgetExceeded (exit 3): then only cost.md is written, saying why, and a
plan.json or cost.json left by an earlier run is removed so no later stage can run on it.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import compute, hardware, provenance
from pipeline.atomic import write_json, write_text
from pipeline.errors import BudgetExceeded, PipelineError
from pipeline.hardware import GIB, Device
from pipeline.model import build_model, gpt2_config
from pipeline.params import Params

WHAT_IF_SCALES = (1, 10)  # the seeds ask what 10x the tokens (1B instead of 100M) would cost
# Activation checkpointing recomputes each block's forward in backward: ~2N of the 6N FLOPs again.
RECOMPUTE_FACTOR = 4 / 3
CPU_CALIBRATION_TOKENS = 2048  # per timed micro-batch on CPU (see calibrate)


@dataclass(frozen=True)
class Plan:
    device: str
    micro_batch_size: int
    grad_accum_steps: int
    precision: str
    activation_checkpointing: bool
    tokens_per_step: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fit:
    plan: Plan
    memory: compute.Memory
    usable_bytes: int

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.usable_bytes


def run(params: Params, manifest: str | Path | None = None, tokenizer: str | Path | None = None) -> dict[str, Any]:
    manifest_path = Path(manifest or params.paths.tokens / "manifest.json")
    tokenizer_path = Path(tokenizer or params.paths.tokenizer / "tokenizer.json")
    tokens_info = read_manifest(manifest_path, tokenizer_path)
    check_windows(tokens_info, params.model.context, manifest_path)
    vocab = int(tokens_info["vocab_size"])
    cost = params.cost
    devices = hardware.catalog(cost.extra_hardware)
    device = hardware.get_device(cost)
    _check_settings(params, device)

    fit = plan_for(params, device, vocab)
    tokens = tokens_to_train(params)
    flops = compute.flops_per_token(params.model, vocab) * tokens
    mfu, mfu_source = _mfu(params, device, fit, tokens_info)
    figures = price(flops, fit.plan, device, params, mfu=mfu, usd_per_hour=cost.usd_per_hour)
    over = _over_budget(params, figures)
    what_if = [_what_if_row(params, d, vocab, tokens * k, k, target=d.name == device.name, target_mfu=mfu)
               for k in WHAT_IF_SCALES for d in devices.values()]
    report = {
        "device": device.name,
        "device_description": device.description,
        "num_devices": cost.num_devices,
        "pricing": cost.pricing,
        "fits": fit.fits,
        "within_budget": not over,
        "override": bool(cost.override_budget and over and fit.fits),
        "over_budget": over,
        "budget": {"usd": cost.budget_usd, "hours": cost.budget_hours, "kwh": cost.budget_kwh},
        "tokens": tokens,
        "steps": tokens // fit.plan.tokens_per_step,
        "tokens_per_step": fit.plan.tokens_per_step,
        "train_tokens_available": int(tokens_info["train_tokens"]),
        "epochs": tokens / int(tokens_info["train_tokens"]) if tokens_info["train_tokens"] else None,
        "parameters": compute.parameter_count(params.model, vocab),
        "flops_per_token": compute.flops_per_token(params.model, vocab),
        "flops": flops,
        **figures,
        "mfu": mfu,
        "mfu_source": mfu_source,
        "peak_memory_bytes": fit.memory.total,
        "memory_usable_bytes": fit.usable_bytes,
        "memory": fit.memory.as_dict(),
        "plan": fit.plan.as_dict(),
        "sources": device.sources,
        "provenance": provenance.record({"model": params.section("model"), "cost": params.section("cost"),
                                         "train": params.section("train")}),
    }
    reports = params.paths.reports
    refusal = _refusal(params, device, fit, figures, over, what_if)
    write_text(reports / "cost.md", render_markdown(report, what_if, refusal))
    print(render_terminal(report, what_if))
    if refusal:
        for stale in (reports / "plan.json", reports / "cost.json"):
            stale.unlink(missing_ok=True)
        raise BudgetExceeded(refusal)
    write_json(reports / "plan.json", fit.plan.as_dict())
    write_json(reports / "cost.json", report)
    return {k: report[k] for k in ("device", "fits", "within_budget", "override", "hours", "usd", "kwh", "plan")}


# ---- inputs -------------------------------------------------------------------------------------

def read_manifest(manifest_path: Path, tokenizer_path: Path) -> dict[str, Any]:
    """The token manifest, checked against the tokenizer the train stage will load."""
    if not manifest_path.is_file():
        raise PipelineError(f"token manifest {manifest_path} not found: run the tokenize stage first "
                            "(python -m pipeline tokenize)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PipelineError(f"token manifest {manifest_path} is not valid JSON ({exc}): "
                            "rerun the tokenize stage") from None
    missing = [k for k in ("vocab_size", "train_tokens", "tokenizer_sha256", "eot_token_id") if k not in manifest]
    if missing:
        raise PipelineError(f"token manifest {manifest_path} lacks {', '.join(missing)}: rerun the tokenize stage")
    if not tokenizer_path.is_file():
        raise PipelineError(f"tokenizer {tokenizer_path} not found: run the tokenize stage first")
    digest = hashlib.sha256(tokenizer_path.read_bytes()).hexdigest()
    if digest != manifest["tokenizer_sha256"]:
        raise PipelineError(f"token manifest {manifest_path} was made with another tokenizer (its tokenizer_sha256 "
                            f"{str(manifest['tokenizer_sha256'])[:12]}... is not the sha256 {digest[:12]}... of "
                            f"{tokenizer_path}): rerun the tokenize stage")
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()
    if vocab != manifest["vocab_size"]:
        raise PipelineError(f"token manifest {manifest_path} says vocab_size {manifest['vocab_size']} but "
                            f"{tokenizer_path} has {vocab} tokens: rerun the tokenize stage")
    return manifest


def check_windows(manifest: dict[str, Any], context: int, manifest_path: Path) -> None:
    """Both splits must hold one training window. Checked here, not in tokenize, so that a
    model.context change does not retokenize the corpus."""
    for name in ("val", "train"):   # val first: it is the smaller, the one to grow
        tokens = int(manifest.get(f"{name}_tokens", 0))
        if tokens < context + 1:
            raise PipelineError(
                f"the corpus is too small for one context window: its {name} split has {tokens} tokens "
                f"({manifest_path}), and model.context {context} needs at least {context + 1}: add text "
                "to the corpus, raise data.val_fraction (for val), or lower model.context")


def _check_settings(params: Params, device: Device) -> None:
    train, cost = params.train, params.cost
    if train.device != "auto" and train.device != device.kind:
        raise PipelineError(f"train.device is {train.device} but cost.hardware {device.name} is a {device.kind} "
                            f"device: make them agree (train.device: auto follows the machine)")
    if train.precision == "bf16" and device.kind == "cuda" and not device.bf16_native:
        raise PipelineError(f"train.precision bf16 on {device.name}: it has no native bf16 (only slow "
                            "emulation); use fp16 or auto")
    if not (cost.budget_usd or cost.budget_hours or cost.budget_kwh or cost.override_budget):
        raise PipelineError("no budget: set cost.budget_usd, cost.budget_hours or cost.budget_kwh (or "
                            "cost.override_budget: true to run without one)")
    if cost.pricing == "owned" and cost.electricity_usd_per_kwh <= 0:
        raise PipelineError("cost.electricity_usd_per_kwh must be > 0 with cost.pricing: owned "
                            "(owned hardware costs its electricity)")
    if cost.pricing != "owned" and cost.usd_per_hour is None and device.usd_per_hour(cost.pricing) is None:
        rented = [p for p in ("on_demand", "spot", "colab") if device.usd_per_hour(p) is not None]
        raise PipelineError(f"cost.pricing {cost.pricing}: the catalog has no such price for {device.name} "
                            f"(it has: {', '.join(rented) or 'none, it is owned hardware'}); set "
                            "cost.usd_per_hour, another cost.pricing, or cost.pricing: owned")


def tokens_to_train(params: Params) -> int:
    """max_steps x tokens_per_step, capped by max_tokens (the train stage stops at whichever comes first)."""
    train = params.train
    tokens = train.max_steps * train.tokens_per_step
    return min(tokens, train.max_tokens) if train.max_tokens else tokens


# ---- the plan -----------------------------------------------------------------------------------

def sequences_per_device(params: Params, num_devices: int) -> int:
    train, context = params.train, params.model.context
    per_step = context * num_devices
    if train.tokens_per_step % per_step:
        lower = max(per_step, train.tokens_per_step // per_step * per_step)
        raise PipelineError(f"train.tokens_per_step ({train.tokens_per_step}) must be a multiple of model.context "
                            f"x cost.num_devices ({context} x {num_devices}): use {lower} or {lower + per_step}")
    return train.tokens_per_step // per_step


def precision_for(params: Params, device: Device) -> str:
    """fp16 on GPUs without native bf16 (T4), bf16 where native, fp32 on CPU unless asked otherwise."""
    if params.train.precision != "auto":
        return params.train.precision
    if device.kind == "cpu":
        return "fp32"
    return "bf16" if device.bf16_native else "fp16"


def plan_for(params: Params, device: Device, vocab: int, *, auto: bool = False) -> Fit:
    """The largest micro-batch that fits, without activation checkpointing if possible.

    Fixed train.micro_batch_size / activation_checkpointing are respected (auto=True ignores them,
    for the what-if table). Returns the smallest failing candidate when nothing fits.
    """
    train, cost = params.train, params.cost
    seqs = sequences_per_device(params, cost.num_devices)
    precision = precision_for(params, device) if not auto else \
        ("fp32" if device.kind == "cpu" else "bf16" if device.bf16_native else "fp16")
    if train.micro_batch_size != "auto" and not auto:
        if seqs % train.micro_batch_size:
            raise PipelineError(f"train.micro_batch_size {train.micro_batch_size} does not divide the {seqs} "
                                "sequences each device runs per step (train.tokens_per_step / model.context / "
                                f"cost.num_devices); use one of {_divisors(seqs)}")
        micros = [train.micro_batch_size]
    else:
        micros = sorted(_divisors(seqs), reverse=True)
    checkpointing = [False, True] if train.activation_checkpointing == "auto" or auto else \
        [train.activation_checkpointing]
    usable = int(device.memory_bytes * (1 - cost.memory_headroom))
    activation = gpt2_config(params.model, vocab, eos_token_id=0).activation_function
    last = None
    for ckpt in checkpointing:
        for micro in micros:
            memory = compute.training_memory(params.model, vocab, micro, precision, ckpt, activation=activation,
                                             device_kind=device.kind, runtime_bytes=device.runtime_overhead_bytes)
            last = Fit(Plan(device.name, micro, seqs // micro, precision, ckpt, params.train.tokens_per_step),
                       memory, usable)
            if last.fits:
                return last
    return last


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---- time, money, energy ------------------------------------------------------------------------

def price(flops: float, plan: Plan, device: Device, params: Params, *, mfu: float,
          usd_per_hour: float | None) -> dict[str, Any]:
    """Hours, dollars, kWh and CO2 of `flops` model FLOPs on cost.num_devices devices."""
    cost = params.cost
    peak = device.peak_flops[plan.precision]
    work = flops * (RECOMPUTE_FACTOR if plan.activation_checkpointing else 1)
    hours = work / (peak * mfu * cost.num_devices) / 3600
    kwh = device.power_watts * cost.num_devices * hours * cost.pue / 1000
    if cost.pricing == "owned":
        rate = usd_per_hour or 0.0
        usd = kwh * cost.electricity_usd_per_kwh + rate * cost.num_devices * hours
        basis = "owned: electricity" + (f" + ${rate}/device-hour" if rate else "")
    else:
        rate = usd_per_hour if usd_per_hour is not None else device.usd_per_hour(cost.pricing)
        usd = rate * cost.num_devices * hours
        basis = f"{cost.pricing}: ${rate}/device-hour" + (" (cost.usd_per_hour)" if usd_per_hour is not None else "")
    return {"hours": hours, "usd": usd, "usd_per_hour": usd / hours if hours else None, "usd_basis": basis,
            "kwh": kwh, "co2_kg": kwh * cost.grid_gco2_per_kwh / 1000, "peak_flops": peak,
            "recompute_factor": RECOMPUTE_FACTOR if plan.activation_checkpointing else 1.0}


def _mfu(params: Params, device: Device, fit: Fit, manifest: dict[str, Any]) -> tuple[float, str]:
    cost = params.cost
    if cost.calibrate and fit.fits:  # a plan that does not fit is refused below: nothing to time
        return calibrate(params, fit.plan, device, int(manifest["vocab_size"]), int(manifest["eot_token_id"]))
    if cost.mfu is not None:
        return cost.mfu, "params: cost.mfu"
    return device.mfu_default, f"catalog default for {device.name}: {device.sources.get('mfu_default', '')}"


def calibrate(params: Params, plan: Plan, device: Device, vocab: int, eos_token_id: int) -> tuple[float, str]:
    """Time real optimizer steps of the configured model here; MFU = achieved / catalog peak.

    The model, precision and checkpointing are the plan's; so is the micro-batch on a GPU. On CPU
    the micro-batch is capped at CPU_CALIBRATION_TOKENS: a full GPT-2 micro-batch takes minutes there,
    and past a few thousand tokens throughput per token hardly depends on the batch (FIELD-NOTES).
    """
    import torch
    import torch.nn.functional as F

    if device.kind == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"cost.calibrate: cost.hardware is {device.name} but this machine has no CUDA GPU; "
                            "calibrate on the target machine, or set cost.mfu")
    where = "cuda" if device.kind == "cuda" else "cpu"
    micro = plan.micro_batch_size if where == "cuda" else \
        max(1, min(plan.micro_batch_size, CPU_CALIBRATION_TOKENS // params.model.context))
    torch.manual_seed(params.train.seed)
    model = build_model(params.model, vocab, eos_token_id).to(where)
    if plan.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.train.lr, fused=True)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(plan.precision)
    scaler = torch.amp.GradScaler(where, enabled=plan.precision == "fp16")
    ids = torch.randint(0, vocab, (micro, params.model.context + 1), device=where)  # speed ignores content
    x, y = ids[:, :-1], ids[:, 1:]

    def step() -> None:
        with torch.autocast(where, dtype=dtype, enabled=dtype is not None):
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if where == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocator, kernels, lazy init
    start = time.perf_counter()
    for _ in range(params.cost.calibrate_steps):
        step()
    seconds = time.perf_counter() - start
    rate = micro * params.model.context * params.cost.calibrate_steps / seconds
    mfu = rate * compute.flops_per_token(params.model, vocab) / device.peak_flops[plan.precision]
    return mfu, (f"calibrated: {rate:,.0f} tokens/s over {params.cost.calibrate_steps} steps of micro-batch "
                 f"{micro} x {params.model.context} ({plan.precision}) on this {where}, "
                 f"against {device.name}'s catalog peak")


def _over_budget(params: Params, figures: dict[str, Any]) -> list[str]:
    cost = params.cost
    limits = {"usd": cost.budget_usd, "hours": cost.budget_hours, "kwh": cost.budget_kwh}
    return [k for k, limit in limits.items() if limit is not None and figures[k] > limit]


def _what_if_row(params: Params, device: Device, vocab: int, tokens: int, scale: int, *, target: bool,
                 target_mfu: float) -> dict[str, Any]:
    """One device at `scale` x the tokens, planned automatically, at its catalog MFU and price."""
    fit = plan_for(params, device, vocab, auto=True)
    pricing = params.cost.pricing
    if pricing == "owned" or device.usd_per_hour(pricing) is None:
        pricing = "on_demand" if device.usd_per_hour("on_demand") is not None else "owned"
    row_params = params.model_copy(update={"cost": params.cost.model_copy(update={"pricing": pricing})})
    mfu = target_mfu if target else device.mfu_default
    figures = price(compute.flops_per_token(params.model, vocab) * tokens, fit.plan, device, row_params,
                    mfu=mfu, usd_per_hour=params.cost.usd_per_hour if target else None)
    return {"device": device.name, "scale": scale, "tokens": tokens, "fits": fit.fits, "plan": fit.plan,
            "peak_memory_bytes": fit.memory.total, "pricing": pricing, **figures}


# ---- the gate -----------------------------------------------------------------------------------

def _refusal(params: Params, device: Device, fit: Fit, figures: dict[str, Any], over: list[str],
             what_if: list[dict[str, Any]]) -> str | None:
    """The one message that stops the pipeline, or None when the run may go ahead."""
    if not fit.fits:
        p = fit.plan
        need, have = fit.memory.total, fit.usable_bytes
        roomy = [r["device"] for r in what_if if r["scale"] == 1 and r["fits"]]
        return (f"no plan fits {device.name}: micro-batch {p.micro_batch_size}, {p.precision}, activation "
                f"checkpointing {'on' if p.activation_checkpointing else 'off'} needs {need / GIB:.2f} GiB, "
                f"{(need - have) / GIB:.2f} GiB more than the {have / GIB:.2f} GiB usable (device memory less "
                f"cost.memory_headroom {params.cost.memory_headroom:.0%}). Change: a smaller model (model.n_layer, "
                f"model.n_embd, model.context) or tokenizer.vocab_size"
                + ("" if params.train.micro_batch_size == "auto" and params.train.activation_checkpointing == "auto"
                   else ", train.micro_batch_size/activation_checkpointing: auto")
                + (f", or a device where it fits: {', '.join(roomy)}" if roomy else "")
                + ". See reports/cost.md.")
    if not over:
        return None
    if params.cost.override_budget:
        return None
    cost = params.cost
    limits = {"usd": (cost.budget_usd, "$", "cost.budget_usd"), "hours": (cost.budget_hours, "h", "cost.budget_hours"),
              "kwh": (cost.budget_kwh, "kWh", "cost.budget_kwh")}
    broken = "; ".join(f"{_fmt(figures[k], u)} > {name} {_fmt(limits[k][0], u)}"
                       for k in over for _, u, name in [limits[k]])
    share = min(limits[k][0] / figures[k] for k in over)
    tokens = tokens_to_train(params)
    fewer = int(tokens * share) // params.train.tokens_per_step * params.train.tokens_per_step
    options = [f"fewer tokens (train.max_tokens: {fewer} fits)" if fewer > 0 else "far fewer tokens",
               "a smaller model"]
    cheaper = [f"{r['device']} ({_fmt(r['hours'], 'h')}, {_fmt(r['usd'], '$')}, {r['pricing']})"
               for r in what_if if r["scale"] == 1 and r["fits"] and r["device"] != device.name
               and all(r[k] <= limits[k][0] for k in limits if limits[k][0] is not None)]
    if cheaper:
        options.append("a device within budget: " + ", ".join(cheaper))
    spot = device.usd_per_hour("spot")
    if cost.pricing == "on_demand" and spot is not None and cost.usd_per_hour is None:
        at_spot = figures["usd"] * spot / device.usd_per_hour("on_demand")
        options.append(f"spot pricing (cost.pricing: spot: {_fmt(at_spot, '$')})")
    return (f"over budget on {device.name} ({figures['usd_basis']}): {broken}. Change: " + "; ".join(options)
            + "; or cost.override_budget: true to run anyway. See reports/cost.md.")


# ---- reports ------------------------------------------------------------------------------------

def _fmt(value: float | None, unit: str) -> str:
    """Human figures: small runs (the demo) in seconds and fractions of a cent, long ones in days."""
    if value is None:
        return "-"
    if unit == "$":
        return f"${value:,.2f}" if value >= 0.01 or value == 0 else "<$0.01"
    if unit == "h":
        if value < 1 / 60:
            return f"{value * 3600:.0f} s"
        if value < 1:
            return f"{value * 60:.0f} min"
        return f"{value:,.1f} h" if value < 100 else f"{value:,.0f} h ({value / 24:,.1f} days)"
    if unit == "GiB":
        return f"{value / GIB:.2f} GiB"
    return f"{_num(value)} {unit}"


def _num(value: float) -> str:
    if 0 < value < 0.001:
        return "<0.001"
    return f"{value:,.2f}" if value >= 10 else f"{value:.3g}"


def _plan_text(plan: Plan) -> str:
    return (f"micro-batch {plan.micro_batch_size} x {plan.grad_accum_steps} accum, {plan.precision}"
            + (", checkpointing" if plan.activation_checkpointing else ""))


def _pricing_words(pricing: str) -> str:
    if pricing in ("on_demand", "owned"):
        return "on-demand price"
    return f"{pricing} price where it has one, else on-demand"


def render_markdown(report: dict[str, Any], what_if: list[dict[str, Any]], refusal: str | None) -> str:
    r, plan = report, report["plan"]
    if refusal:
        status = f"**REFUSED** (exit 3): {refusal}"
    elif r["override"]:
        status = f"**Over budget ({', '.join(r['over_budget'])}), run allowed by cost.override_budget.**"
    else:
        status = "Within budget: the run may go ahead."
    budget = ", ".join(f"{k} {v}" for k, v in r["budget"].items() if v is not None) or "none"
    mem = "\n".join(f"| {k} | {_fmt(v, 'GiB')} |" for k, v in r["memory"].items())
    lines = [
        f"# Cost estimate: {r['device']}",
        "",
        status,
        "",
        f"- Device: {r['device_description']} x {r['num_devices']}",
        f"- Model: {r['parameters']:,} parameters, {r['flops_per_token']:.3g} training FLOPs per token "
        "(6N + attention, as nanoGPT counts)",
        f"- Tokens: {r['tokens']:,} in {r['steps']:,} steps of {r['tokens_per_step']:,} "
        f"({r['epochs']:.2f} epochs of the {r['train_tokens_available']:,} train tokens)" if r["epochs"] is not None
        else f"- Tokens: {r['tokens']:,}",
        f"- Compute: {r['flops']:.3g} FLOPs"
        + (f" (x{r['recompute_factor']:.2f} executed: checkpointing recomputes the forward)"
           if r["recompute_factor"] != 1 else ""),
        f"- Plan: {_plan_text(Plan(**plan))} ({'fits' if r['fits'] else 'does NOT fit'}: "
        f"{_fmt(r['peak_memory_bytes'], 'GiB')} of {_fmt(r['memory_usable_bytes'], 'GiB')} usable)",
        f"- MFU: {r['mfu']:.1%} ({r['mfu_source']})",
        f"- Time: {_fmt(r['hours'], 'h')} at {r['peak_flops'] / 1e12:g} TFLOP/s peak",
        f"- Money: {_fmt(r['usd'], '$')} ({r['usd_basis']})",
        f"- Energy: {_fmt(r['kwh'], 'kWh')}, {_fmt(r['co2_kg'], 'kg CO2')}",
        f"- Budget: {budget}",
        "",
        "## Peak memory per device",
        "",
        "| part | size |",
        "| --- | --- |",
        mem,
        f"| **total** | **{_fmt(r['peak_memory_bytes'], 'GiB')}** |",
        "",
        "## What if: every catalog device, 1x and 10x the tokens",
        "",
        "Each device planned automatically, at its catalog MFU (this run's MFU for "
        f"{r['device']}); $ at its {_pricing_words(r['pricing'])}, else electricity (owned).",
        "",
        "| device | tokens | fits | plan | peak memory | hours | $ | kWh |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in what_if:
        lines.append(f"| {row['device']} | {row['tokens']:,} ({row['scale']}x) | {'yes' if row['fits'] else 'no'} | "
                     f"{_plan_text(row['plan'])} | {_fmt(row['peak_memory_bytes'], 'GiB')} | "
                     f"{_fmt(row['hours'], 'h')} | {_fmt(row['usd'], '$')} ({row['pricing']}) | {_num(row['kwh'])} |")
    lines += ["", "## Sources", ""] + [f"- {k}: {v}" for k, v in r["sources"].items()]
    return "\n".join(lines) + "\n"


def render_terminal(report: dict[str, Any], what_if: list[dict[str, Any]]) -> str:
    r = report
    head = (f"estimate: {r['device']} x {r['num_devices']}: {r['tokens']:,} tokens, {r['flops']:.3g} FLOPs, "
            f"{_plan_text(Plan(**r['plan']))}, peak {_fmt(r['peak_memory_bytes'], 'GiB')} of "
            f"{_fmt(r['memory_usable_bytes'], 'GiB')} ({'fits' if r['fits'] else 'DOES NOT FIT'}); "
            f"{_fmt(r['hours'], 'h')}, {_fmt(r['usd'], '$')}, {_fmt(r['kwh'], 'kWh')} at MFU {r['mfu']:.1%}")
    rows = [f"  {'device':<20} {'fits':<4} {'hours':>22} {'$':>12} {'kWh':>10}"]
    rows += [f"  {row['device']:<20} {'yes' if row['fits'] else 'no':<4} {_fmt(row['hours'], 'h'):>22} "
             f"{_fmt(row['usd'], '$'):>12} {_num(row['kwh']):>10}" for row in what_if if row["scale"] == 1]
    return head + "\n" + "\n".join(rows)
