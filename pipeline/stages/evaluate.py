"""The evaluate stage: how good is the model, what does it write, and was the cost estimate right.

    python -m pipeline evaluate [--params params.yaml --params params/demo.yaml]

Scores the WHOLE val split (not a sample) with the final model and the kept checkpoints chosen by
evaluate.checkpoints (pipeline/evaluation/scoring.py), samples from evaluate.prompts
(pipeline/evaluation/sampling.py), scores the final model beyond its own split: bits per byte on
the reference texts of evaluate.reference_texts (pipeline/evaluation/reference.py) and the
lm-eval tasks of evaluate.tasks (pipeline/evaluation/harness.py), and holds the run
(reports/train.json) against the estimate it was gated with. Writes reports/eval.json (every figure), reports/metrics.json (the headline ones:
DVC metrics), reports/samples.md, reports/summary.md and reports/plots/ (PNGs and DVC plot data).
It also works on a model directory alone (`--set paths.model=DIR`), as long as its tokenizer is
the one the token files were made with (pipeline/evaluation/loading.py checks it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from pipeline.core import provenance
from pipeline.core.atomic import write_json, write_text
from pipeline.core.params import Params
from pipeline.data.tokens import MANIFEST_FILE, TokenManifest
from pipeline.engine import checkpoint
from pipeline.engine.plan import resolve_device
from pipeline.engine.report import TrainReport
from pipeline.evaluation.harness import load_tasks, run_tasks
from pipeline.evaluation.loading import (check_fits, check_shape, check_tokenizer, describe_model, encode_prompts,
                                         load_model, load_tokenizer, weights_fingerprint)
from pipeline.evaluation.reference import read_texts, score_texts
from pipeline.evaluation.sampling import generate_samples
from pipeline.evaluation.scoring import (Score, evaluate_checkpoints, score, scored_stream, select_checkpoints,
                                         unigram_baseline)
from pipeline.registry import declared_params
from pipeline.reports import forecast_check, headline, plots, quantities as report


def run(params: Params, *, model: Path, tokens: Path, tokenizer: Path, eval_data: Path, train_report: Path,
        train_live: Path, checkpoints: Path, samples_md: Path, summary_md: Path, plots_dir: Path,
        eval_report: Path, metrics: Path) -> dict[str, Any]:
    model_dir, tokens_dir, ckpt_dir = Path(model), Path(tokens), Path(checkpoints)
    ev = params.evaluate

    # every cheap check first: bad input fails in a second, not after scoring
    manifest = TokenManifest.read(tokens_dir / MANIFEST_FILE).as_dict()
    stream = scored_stream(tokens_dir, manifest)
    tok = load_tokenizer(model_dir)
    check_tokenizer(tok, model_dir, Path(tokenizer), manifest)
    prompt_ids = encode_prompts(tok, ev.prompts)
    device = torch.device(resolve_device(params.train.device))
    ckpt_manifest = checkpoint.read_index(ckpt_dir)
    train = _as_dict(TrainReport.read_if_present(train_report))
    references = read_texts(tok, Path(eval_data), ev.reference_texts, manifest["eot_token_id"])
    tasks = load_tasks(Path(eval_data), ev.tasks)

    def scorer(net: PreTrainedModel) -> Score:
        return score(net, stream, params.model.context, ev.batch_size, device, manifest["val_bytes"])

    net = load_model(model_dir, device)
    check_fits(net, params, manifest, model_dir)
    check_shape(net, params, model_dir)
    final_fp = weights_fingerprint(net)
    described = describe_model(net, model_dir, final_fp)
    final = scorer(net)
    samples_out = generate_samples(net, tok, ev.prompts, prompt_ids, manifest["eot_token_id"], ev, device)
    reference_results = score_texts(net, references, params.model.context, ev.batch_size, device)
    task_results = run_tasks(net, tok, tasks, params.model.context, ev.batch_size, device)
    del net

    ckpt_results = evaluate_checkpoints(ckpt_dir, select_checkpoints(ckpt_manifest, ev.checkpoints), device,
                                        scorer, {final_fp: ("final", final)})
    baseline = unigram_baseline(tokens_dir, manifest, stream)
    eva = report.estimate_vs_actual(train, Path(train_report))

    result = {
        **final.as_dict(),
        "val_tokens_scored": final.tokens,
        "val_bytes": manifest["val_bytes"],
        "window": params.model.context,
        "unigram": baseline.as_dict(),
        "model": described,
        "checkpoints": ckpt_results,
        "best_vs_final": report.best_vs_final(ckpt_manifest, ckpt_results, final),
        "estimate_vs_actual": eva,
        "forecast_vs_actual": forecast_check.held_against(train),   # and the run kept for later forecasts
        "stop_reason": (train or {}).get("stop_reason"),
        "samples": len(samples_out),
        "reference_texts": reference_results,
        "tasks": task_results,
    }
    live = plots.read_live(Path(train_live), params.train.tokens_per_step)
    plots.write_all(Path(plots_dir), live, ckpt_results, eva, baseline.as_dict()["val_loss"], result["forecast_vs_actual"])
    write_text(samples_md, report.samples_markdown(samples_out, ev))
    files = {"eval": eval_report, "samples": samples_md, "plots": plots_dir, "cost": Path(params.paths.reports) / "cost.json", "train": train_report,
             "metrics": metrics}
    write_text(summary_md, report.summary_markdown(result, manifest, train, samples_out, model_dir, ckpt_dir, files))
    write_json(eval_report, {**result, **provenance.record(declared_params("evaluate", params))})
    headline.write(metrics, result)   # reports/metrics.json: what `dvc exp show` compares
    print(f"val loss {result['val_loss']:.4f}, perplexity {result['perplexity']:.2f}, "
          f"{result['bits_per_byte']:.4f} bits/byte over {final.tokens:,} tokens "
          f"(unigram baseline {baseline.as_dict()['val_loss']:.4f}) -> {summary_md}")
    _say_beyond(reference_results, task_results)
    return result


def _say_beyond(texts: dict[str, dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> None:
    for name, text in texts.items():
        print(f"{name}: {text['bits_per_byte']:.4f} bits/byte over {text['bytes']:,} bytes")
    for name, task in tasks.items():
        for metric, m in task["metrics"].items():
            error = "" if m["stderr"] is None else f" ± {m['stderr']:.1%}"
            print(f"{name} {metric}: {m['value']:.1%}{error} over {task['n']:,} items, {m['vs_chance']}")


def _as_dict(record) -> dict[str, Any] | None:
    return record.as_dict() if record is not None else None
