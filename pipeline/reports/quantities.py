"""The evaluate stage's words: estimate against actual, reports/samples.md and reports/summary.md."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.reports import forecast_check


# quantity -> (unit shown to people, label, +1 when more is worse / -1 when less is worse)
QUANTITIES = {
    "hours": ("h", "Wall-clock hours", 1),
    "tokens_per_second": ("tok/s", "Throughput", -1),
    "mfu": ("", "MFU", -1),
    "peak_memory_bytes": ("B", "Peak memory", 1),
    "usd": ("$", "Cost", 1),
    "kwh": ("kWh", "Energy", 1),
    "co2_kg": ("kg", "CO2", 1),
}


# ---- estimate against actual -------------------------------------------------------------------

def estimate_vs_actual(train: dict[str, Any] | None, train_path: Path) -> dict[str, Any]:
    """Each quantity as estimated and measured (reports/train.json), error in %. The estimate is
    the cost report the run was gated with, which train recorded when it started: a later
    estimate (after a price edit, say) is not the one the money was committed on.

    Totals (hours, $, kWh, CO2) are estimated for the tokens actually trained: a run that stopped
    early is compared with the estimate's rate, not with the plan it did not finish.
    Error = (actual - estimate) / estimate, so +20% means the run took 20% more than estimated.
    """
    cost = (train or {}).get("estimate")
    if train is None or cost is None:
        missing = f"{train_path} not found" if train is None else f"{train_path} records no estimate"
        return {"available": False,
                "note": f"{missing}: estimate against actual needs the train stage's report, with the "
                        "estimate stage's cost report it was gated with (run estimate before train)"}
    planned, trained = cost.get("tokens"), train.get("tokens")
    scale = _ratio(trained, planned) or 1.0
    hours = train.get("wall_hours")
    kwh_measured = _number(train.get("kwh"))
    kw = _ratio(cost.get("kwh"), cost.get("hours"))          # the estimate's average power, PUE included
    kwh = kwh_measured if kwh_measured is not None else _times(kw, hours)
    if cost["pricing"] == "owned":
        usd = _times(_ratio(cost.get("usd"), cost.get("kwh")), kwh)
        usd_basis = "actual kWh x the estimate's $/kWh"
    else:
        usd = _times(_ratio(cost.get("usd"), cost.get("hours")), hours)
        usd_basis = "wall hours x the estimate's $/h"
    rows = {
        "hours": (_times(cost.get("hours"), scale), hours),
        "tokens_per_second": (cost.get("tokens_per_second"), train.get("tokens_per_second")),
        "mfu": (cost.get("mfu"), train.get("mfu")),
        "peak_memory_bytes": (cost.get("peak_memory_bytes"), train.get("peak_memory_bytes")),
        "usd": (_times(cost.get("usd"), scale), usd),
        "kwh": (_times(cost.get("kwh"), scale), kwh),
        "co2_kg": (_times(cost.get("co2_kg"), scale), _times(_ratio(cost.get("co2_kg"), cost.get("kwh")), kwh)),
    }
    return {
        "available": True,
        "planned_tokens": planned,
        "trained_tokens": trained,
        "estimate_scale": scale,
        "kwh_source": f"measured ({train.get('kwh_source') or train_path})" if kwh_measured is not None else
                      "derived: the estimate's average power (kWh/h, PUE included) x measured hours",
        "peak_memory_kind": train.get("peak_memory_kind"),
        "usd_source": usd_basis,
        "quantities": {name: {"estimate": _number(est), "actual": _number(act), "error_pct": _error(est, act)}
                       for name, (est, act) in rows.items()},
    }


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _ratio(a: Any, b: Any) -> float | None:
    a, b = _number(a), _number(b)
    return a / b if a is not None and b else None


def _times(a: Any, b: Any) -> float | None:
    a, b = _number(a), _number(b)
    return a * b if a is not None and b is not None else None


def _error(estimate: Any, actual: Any) -> float | None:
    estimate, actual = _number(estimate), _number(actual)
    return 100.0 * (actual - estimate) / estimate if estimate and actual is not None else None


def best_vs_final(ckpt_manifest: dict[str, Any] | None, results: dict[str, dict[str, Any]],
                  final) -> dict[str, Any] | None:
    best = (ckpt_manifest or {}).get("best")
    if best not in results:
        return None
    final_loss = final.as_dict()["val_loss"]
    return {"best": best, "best_val_loss": results[best]["val_loss"], "final_val_loss": final_loss,
            "final_minus_best": final_loss - results[best]["val_loss"],
            "final_is_best": results[best]["same_weights_as"] == "final"}


# ---- samples.md --------------------------------------------------------------------------------

def samples_markdown(samples: list[dict[str, Any]], ev) -> str:
    lines = ["# Samples", "",
             f"One sample per prompt from `evaluate.prompts`: seed {ev.seed}, temperature {ev.temperature}, "
             f"top-k {ev.top_k}, at most {ev.max_new_tokens} new tokens. The prompt is shown in "
             "[brackets]; the rest is the model's.", ""]
    if not samples:
        lines.append("No prompts: `evaluate.prompts` is empty.")
    for i, s in enumerate(samples, 1):
        text = f"[{s['prompt']}]{s['completion']}"
        fence = "````" if "```" in text else "```"
        end = "stopped at end of text" if s["ended"] else "stopped at max_new_tokens"
        lines += [f"## {i}. {s['prompt']}", "", f"{fence}text", text, fence, "",
                  f"*{s['new_tokens']} new tokens, {end}.*", ""]
    return "\n".join(lines)


# ---- summary.md --------------------------------------------------------------------------------

def summary_markdown(result: dict[str, Any], manifest: dict[str, Any], train: dict[str, Any] | None,
                     samples: list[dict[str, Any]], model_dir: Path, ckpt_dir: Path, files: dict[str, Path]) -> str:
    """files: the paths of the reports it points to (eval, samples, plots, cost, train)."""
    m = result["model"]
    out = ["# Run summary", ""]
    shape = (f"{m['num_hidden_layers']} layers, {m['hidden_size']} wide, {m['num_attention_heads']} heads, "
             f"context {m['max_position_embeddings']}")
    out.append(f"- **Model**: {m['model_type']} ({shape}), {m['parameters']:,} parameters, "
               f"vocabulary {m['vocab_size']}; in `{model_dir}`.")
    out.append(f"- **Data**: {_int(manifest.get('train_tokens'))} train tokens, {_int(manifest.get('val_tokens'))} "
               f"val tokens ({_int(manifest.get('val_bytes'))} bytes, "
               f"{_num(manifest.get('bytes_per_token'))} bytes/token).")
    out.append(f"- **Training**: {_training_line(train, files['train'])}")
    out += ["", *_quality(result), "", *_beyond(result), "", *_checkpoints(result), "", *_samples(samples, files["samples"]), "",
            *_cost(result["estimate_vs_actual"]), "", *_files(model_dir, ckpt_dir, files), ""]
    out += [*forecast_check.markdown(result.get("forecast_vs_actual")), ""] if result.get("forecast_vs_actual") else []
    return "\n".join(out)


def _training_line(train: dict[str, Any] | None, train_path: Path) -> str:
    if train is None:
        return f"no {train_path} (a model evaluated on its own)."
    line = (f"stopped because **{train['stop_reason']}** after {_int(train['steps'])} steps, "
            f"{_int(train['tokens'])} tokens, {_num(train['wall_hours'])} h on {train['device']} "
            f"({train['precision']}); the model is {train.get('final_weights') or 'the last weights'}.")
    if train["overflow_steps_skipped"]:
        line += f" {train['overflow_steps_skipped']} fp16 overflow step(s) skipped by the loss scaler."
    if train["nonfinite_steps_skipped"]:
        line += f" {train['nonfinite_steps_skipped']} step(s) with a non-finite loss skipped."
    if train.get("quarantined_checkpoints"):
        line += (f" Incomplete or corrupt checkpoint(s) set aside: {', '.join(train['quarantined_checkpoints'])}.")
    return line


def _quality(result: dict[str, Any]) -> list[str]:
    base = result["unigram"]
    gain = 1 - result["bits_per_byte"] / base["bits_per_byte"]
    verdict = (f"The model needs {gain:.1%} fewer bits per byte than the unigram baseline" if gain >= 0 else
               f"The model is WORSE than the unigram baseline ({-gain:.1%} more bits per byte)")
    return [
        f"## Quality on the whole val split ({result['val_tokens_scored']:,} tokens)", "",
        "| | loss (nats/token) | perplexity | bits per byte |", "| --- | ---: | ---: | ---: |",
        f"| this model | {result['val_loss']:.4f} | {result['perplexity']:.2f} | {result['bits_per_byte']:.4f} |",
        f"| unigram baseline | {base['val_loss']:.4f} | {base['perplexity']:.2f} | {base['bits_per_byte']:.4f} |",
        "",
        f"{verdict}, which knows only the train split's token frequencies (add-one smoothed). "
        "Bits per byte compare across tokenizers; loss and "
        f"perplexity only within one. Windows of {result['window']} tokens, non-overlapping.",
    ]


def _beyond(result: dict[str, Any]) -> list[str]:
    """Reference texts and lm-eval tasks (evaluate.reference_texts, evaluate.tasks)."""
    out = ["## Beyond the val split", ""]
    texts, tasks = result.get("reference_texts") or {}, result.get("tasks") or {}
    if not texts and not tasks:
        return out + ["No reference texts or tasks: set `evaluate.reference_texts` and `evaluate.tasks` "
                      "(eval/README.md) to score the model on text and tasks others report."]
    if texts:
        out += ["| reference text | bytes | tokens | bits per byte |", "| --- | ---: | ---: | ---: |"]
        out += [f"| {name} (`{t['file']}`) | {t['bytes']:,} | {t['tokens']:,} | {t['bits_per_byte']:.4f} |"
                for name, t in texts.items()]
        out += ["", f"Each text scored whole, as the val split: windows of {result['window']} tokens, stride "
                    f"{result['window']}. Bits per byte compare with other models on the same text.", ""]
    if tasks:
        out += ["| task | metric | score | ± stderr | n | chance | against chance |",
                "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for name, task in tasks.items():
            chance = "n/a" if task["chance"] is None else f"{task['chance']:.1%}"
            for metric, m in task["metrics"].items():
                stderr = "n/a" if m["stderr"] is None else f"{m['stderr']:.1%}"
                out.append(f"| {name} | {metric} | {m['value']:.1%} | {stderr} | {task['n']:,} | {chance} | "
                           f"{m['vs_chance']} |")
        out += ["", "lm-evaluation-harness, each task's own prompt and few-shot count, on the data in "
                    "`evaluate.tasks`. Against chance: 1.96 standard errors of a uniform guess or more from "
                    "it; a ~124M model sits near chance on 4-way tasks (README: beyond the val split)."]
    return out if out[-1] else out[:-1]


def _checkpoints(result: dict[str, Any]) -> list[str]:
    rows = result["checkpoints"]
    out = ["## Checkpoints", ""]
    if not rows:
        return out + ["No checkpoints evaluated (none kept, or `evaluate.checkpoints` is none)."]
    out += ["| checkpoint | tokens | val loss (whole split) | during training | bits per byte |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        same = f" (= {r['same_weights_as']})" if r["same_weights_as"] else ""
        out.append(f"| {name}{same} | {_int(r['tokens'])} | {r['val_loss']:.4f} | {_num(r['train_val_loss'])} | "
                   f"{r['bits_per_byte']:.4f} |")
    cmp = result["best_vs_final"]
    if cmp and cmp["final_is_best"]:
        out += ["", f"The final model is the best checkpoint, {cmp['best']} (same weights)."]
    elif cmp:
        verdict = "better than" if cmp["final_minus_best"] < 0 else "no better than"
        out += ["", f"The final model ({cmp['final_val_loss']:.4f}) is {verdict} the best checkpoint "
                    f"{cmp['best']} ({cmp['best_val_loss']:.4f}), a difference of {cmp['final_minus_best']:+.4f}."]
    out += ["", "\"During training\" is the trainer's estimate on a few val batches; the whole-split "
                "number is the one to trust."]
    return out


def _samples(samples: list[dict[str, Any]], samples_path: Path) -> list[str]:
    out = [f"## Samples (excerpt; all in {samples_path})", ""]
    for s in samples[:3]:
        text = " ".join(f"[{s['prompt']}]{s['completion']}".split())
        out.append(f"> {_escape(text[:200])}{'…' if len(text) > 200 else ''}")
        out.append("")
    return out[:-1] if samples else out + ["No prompts in `evaluate.prompts`."]


def _cost(eva: dict[str, Any]) -> list[str]:
    out = ["## Cost: estimate against actual", ""]
    if not eva["available"]:
        return out + [eva["note"] + "."]
    out += ["| | estimate | actual | error |", "| --- | ---: | ---: | ---: |"]
    for name, q in eva["quantities"].items():
        unit, label, _ = QUANTITIES[name]
        err = "n/a" if q["error_pct"] is None else f"{q['error_pct']:+.1f}%"
        if q["error_pct"] is not None and abs(q["error_pct"]) >= 100:
            err += f" ({q['actual'] / q['estimate']:.3g}x)"
        out.append(f"| {label} | {with_unit(q['estimate'], unit)} | {with_unit(q['actual'], unit)} | {err} |")
    if eva["estimate_scale"] != 1.0:
        out += ["", f"Totals are estimated for the {_int(eva['trained_tokens'])} tokens trained; the plan was "
                    f"{_int(eva['planned_tokens'])} tokens."]
    kind = f" Peak memory measured as {eva['peak_memory_kind']}." if eva.get("peak_memory_kind") else ""
    out += ["", f"Actual energy: {eva['kwh_source']}. Actual cost: {eva['usd_source']}.{kind} "
                "Error = (actual - estimate) / estimate; n/a: not measured or not estimated."]
    return out


def _files(model_dir: Path, ckpt_dir: Path, files: dict[str, Path]) -> list[str]:
    return ["## Files", "",
            f"- `{files['eval']}`: every number above; the headline ones in `{files['metrics']}` "
            "(`dvc metrics show`, `dvc exp show`)",
            f"- `{files['samples']}`: all samples",
            f"- `{files['plots']}/`: loss.png, checkpoints.png, estimate_vs_actual.png and their CSV data "
            "(`dvc plots show` shows the loss curves and the two pictures)",
            f"- `{files['cost']}`, `{files['train']}`: the estimate and the training report",
            f"- `{model_dir}`: the model and tokenizer (`AutoModelForCausalLM.from_pretrained`)",
            f"- `{ckpt_dir}/`: kept checkpoints"]


def with_unit(x: float | None, unit: str) -> str:
    if x is None:
        return "n/a"
    if unit == "h" and x < 1:
        return f"{x * 3600:.3g} s" if x < 1 / 60 else f"{x * 60:.3g} min"
    if unit == "B":
        return f"{x / 2**30:.3g} GiB"
    if unit == "$":
        return f"${_num(x)}"
    if unit == "":
        return f"{x:.1%}"
    return f"{_num(x)} {unit}"


def _num(x: Any) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _int(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else _num(x)


def _escape(text: str) -> str:
    for ch in "\\`*_[]<>#|":
        text = text.replace(ch, "\\" + ch)
    return text
