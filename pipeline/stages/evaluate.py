"""The evaluate stage: how good is the model, what does it write, and was the cost estimate right.

    python -m pipeline evaluate [--params params.yaml --params params/demo.yaml]

Scores the WHOLE val split (not a sample) with the final model and the kept checkpoints chosen by
evaluate.checkpoints, samples from evaluate.prompts, and compares reports/cost.json (predicted)
with reports/train.json (measured). Writes reports/eval.json (every figure), reports/metrics.json
(the headline ones: DVC metrics), reports/samples.md, reports/summary.md and reports/plots/ (PNGs
and DVC plot data). It also works on a model directory
alone (`--set paths.model=DIR`), as long as its tokenizer is the one the token files were made with.
"""
from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel

from pipeline.engine import checkpoint
from pipeline.reports import headline, plots, quantities as report
from pipeline.core import provenance
from pipeline.core.atomic import write_json, write_text
from pipeline.core.errors import PipelineError
from pipeline.model.build import count_parameters
from pipeline.core.params import Params
from pipeline.engine.plan import resolve_device
from pipeline.data.tokens import MANIFEST_FILE, TOKENIZER_FILE, TRAIN_FILE, VAL_FILE, TokenManifest, read_tokens
from pipeline.engine.report import TrainReport

# Tokenizer parts that decide which ids a text becomes; post_processor is left out because
# save_pretrained adds an empty template one, and the token files never used it.
_ENCODING_PARTS = ("model", "normalizer", "pre_tokenizer", "added_tokens")
_UNIGRAM_CHUNK = 1 << 24
_VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")


@dataclass(frozen=True)
class Score:
    """Next-token cross-entropy summed over a token stream."""

    nats: float
    tokens: int
    val_bytes: int

    def as_dict(self) -> dict[str, float | int]:
        loss = self.nats / self.tokens
        return {"val_loss": loss, "perplexity": math.exp(loss),
                "bits_per_byte": self.nats / math.log(2) / self.val_bytes}


def run(params: Params, *, model: Path, tokens: Path, tokenizer: Path, train_report: Path,
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

    def scorer(net: PreTrainedModel) -> Score:
        return score(net, stream, params.model.context, ev.batch_size, device, manifest["val_bytes"])

    net = load_model(model_dir, device)
    _check_fits(net, params, manifest, model_dir)
    final_fp = weights_fingerprint(net)
    described = describe_model(net, model_dir, final_fp)
    final = scorer(net)
    samples_out = generate_samples(net, tok, ev.prompts, prompt_ids, manifest["eot_token_id"], ev, device)
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
        "stop_reason": (train or {}).get("stop_reason"),
        "samples": len(samples_out),
    }
    live = plots.read_live(Path(train_live), params.train.tokens_per_step)
    plots.write_all(Path(plots_dir), live, ckpt_results, eva, baseline.as_dict()["val_loss"])
    write_text(samples_md, report.samples_markdown(samples_out, ev))
    files = {"eval": eval_report, "samples": samples_md, "plots": plots_dir, "cost": Path(params.paths.reports) / "cost.json", "train": train_report,
             "metrics": metrics}
    write_text(summary_md, report.summary_markdown(result, manifest, train, samples_out, model_dir, ckpt_dir, files))
    used = {k: params.section(k) for k in ("paths", "model", "evaluate")}
    used["train"] = {"device": params.train.device, "tokens_per_step": params.train.tokens_per_step}
    write_json(eval_report, {**result, **provenance.record(used)})
    headline.write(metrics, result)   # reports/metrics.json: what `dvc exp show` compares
    print(f"val loss {result['val_loss']:.4f}, perplexity {result['perplexity']:.2f}, "
          f"{result['bits_per_byte']:.4f} bits/byte over {final.tokens:,} tokens "
          f"(unigram baseline {baseline.as_dict()['val_loss']:.4f}) -> {summary_md}")
    return result


# ---- inputs ------------------------------------------------------------------------------------

def _as_dict(record) -> dict[str, Any] | None:
    return record.as_dict() if record is not None else None


def scored_stream(tokens_dir: Path, manifest: dict[str, Any]) -> np.ndarray:
    """val.bin with an end-of-text token in front unless it already starts with one.

    The model reads documents that begin after an end-of-text token, so that token is the context
    for the first val token: every val token is then predicted exactly once.
    """
    path = tokens_dir / VAL_FILE
    ids = read_tokens(path)
    if len(ids) != manifest["val_tokens"]:
        raise PipelineError(f"{path} holds {len(ids)} tokens but {tokens_dir / MANIFEST_FILE} says "
                            f"{manifest['val_tokens']}: rerun the tokenize stage")
    eot = manifest["eot_token_id"]
    stream = np.asarray(ids, dtype=np.int64)
    if len(stream) == 0 or stream[0] != eot:
        stream = np.concatenate([[eot], stream])
    if len(stream) < 2 or manifest["val_bytes"] <= 0:
        raise PipelineError(f"the val split {path} is empty: raise data.val_fraction or add documents, "
                            "then rerun the tokenize stage")
    return stream


def load_tokenizer(model_dir: Path):
    _require_dir(model_dir)
    # AutoTokenizer "loads" a model directory without vocabulary files as an empty tokenizer
    if not any((model_dir / name).is_file() for name in _VOCAB_FILES):
        raise PipelineError(f"no tokenizer in {model_dir} (none of {', '.join(_VOCAB_FILES)}): save the "
                            "tokenizer with the model (tokenizer.save_pretrained into the same directory)")
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, json errors... for one cause
        raise PipelineError(f"no usable tokenizer in {model_dir} ({_first_line(exc)}): save the tokenizer "
                            "with the model (tokenizer.save_pretrained into the same directory)") from None


def check_tokenizer(tok, model_dir: Path, reference_dir: Path, manifest: dict[str, Any]) -> None:
    """The model's tokenizer must turn text into the ids the token files hold."""
    expected = manifest["tokenizer_sha256"]
    own_file = model_dir / TOKENIZER_FILE
    if own_file.is_file() and provenance.file_sha256(own_file) == expected:
        return
    ref_file = reference_dir / TOKENIZER_FILE
    if not ref_file.is_file():
        raise PipelineError(f"cannot check the tokenizer of {model_dir}: its tokenizer.json differs from the "
                            f"one in the token manifest and {ref_file} (paths.tokenizer) is missing")
    if provenance.file_sha256(ref_file) != expected:
        raise PipelineError(f"{ref_file} is not the tokenizer the token files were made with "
                            "(sha256 differs from the manifest's tokenizer_sha256): rerun the tokenize stage")
    ours = _encoding_parts(tok.backend_tokenizer.to_str())
    theirs = _encoding_parts(ref_file.read_text(encoding="utf-8"))
    if ours != theirs:
        differ = [k for k in _ENCODING_PARTS if ours.get(k) != theirs.get(k)]
        raise PipelineError(f"the tokenizer in {model_dir} does not match the token files' tokenizer {ref_file} "
                            f"({', '.join(differ)} differ): evaluate a model trained with this tokenizer, "
                            "or retokenize the data with the model's tokenizer")


def _encoding_parts(tokenizer_json: str) -> dict[str, Any]:
    data = json.loads(tokenizer_json)
    parts = {k: data.get(k) for k in _ENCODING_PARTS}
    parts["added_tokens"] = sorted((t["id"], t["content"]) for t in data.get("added_tokens") or [])
    return parts


def encode_prompts(tok, prompts: list[str]) -> list[list[int]]:
    encoded = []
    for i, prompt in enumerate(prompts):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise PipelineError(f"evaluate.prompts[{i}] ({prompt!r}) encodes to no tokens: "
                                "give every prompt some text")
        encoded.append(list(ids))
    return encoded


def load_model(model_dir: Path, device: torch.device) -> PreTrainedModel:
    _require_dir(model_dir)
    try:
        net, info = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, dtype=torch.float32, output_loading_info=True)
    except Exception as exc:  # missing config, truncated safetensors, unknown architecture...
        raise PipelineError(f"the model in {model_dir} cannot be loaded ({_first_line(exc)}): it is "
                            "incomplete or corrupt; rerun the train stage or restore the directory") from None
    # from_pretrained fills absent tensors with random values and only warns: refuse that.
    absent = sorted(set(info["missing_keys"]) | {str(k) for k in info["mismatched_keys"]})
    if absent:
        raise PipelineError(f"the weights in {model_dir} lack or mis-shape {len(absent)} tensor(s) "
                            f"({', '.join(absent[:3])}...): the directory is corrupt; rerun the train stage")
    return net.to(device).eval()


def _check_fits(net: PreTrainedModel, params: Params, manifest: dict[str, Any], model_dir: Path) -> None:
    positions = _positions(net)
    if params.model.context > positions:
        raise PipelineError(f"model.context ({params.model.context}) exceeds the {positions} positions of the "
                            f"model in {model_dir}: set model.context to at most {positions}")
    if params.evaluate.max_new_tokens > positions - 2:
        raise PipelineError(f"evaluate.max_new_tokens ({params.evaluate.max_new_tokens}) leaves no room for a "
                            f"prompt in the {positions} positions of the model in {model_dir}: lower it")
    if net.config.vocab_size < manifest["vocab_size"]:
        raise PipelineError(f"the model in {model_dir} has {net.config.vocab_size} embeddings but the token "
                            f"files use a vocabulary of {manifest['vocab_size']}: it was trained on other data")


def _positions(net: PreTrainedModel) -> int:
    return getattr(net.config, "n_positions", None) or net.config.max_position_embeddings


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise PipelineError(f"model directory {path} not found: run the train stage, or set paths.model "
                            "to a directory written by save_pretrained")


# ---- scoring -----------------------------------------------------------------------------------

@torch.inference_mode()
def score(net: PreTrainedModel, stream: np.ndarray, context: int, batch_size: int,
          device: torch.device, val_bytes: int) -> Score:
    """Sum of -log p(stream[i+1] | window) over non-overlapping windows of `context` predictions.

    Windows start every `context` tokens; the tail is one last, shorter window, so every token after
    the first is scored once. Sums are float64 in a fixed order: the same model gives the same bits.
    """
    n = len(stream) - 1
    starts = list(range(0, n - context + 1, context))
    tail = n - len(starts) * context
    total = 0.0
    for i in range(0, len(starts), batch_size):
        total += _window_nats(net, stream, starts[i:i + batch_size], context, device)
    if tail:
        total += _window_nats(net, stream, [len(starts) * context], tail, device)
    return Score(nats=total, tokens=n, val_bytes=val_bytes)


def _window_nats(net, stream: np.ndarray, starts: list[int], length: int, device: torch.device) -> float:
    rows = np.stack([stream[s:s + length + 1] for s in starts])
    batch = torch.from_numpy(rows).to(device)
    inputs = batch[:, :-1]
    logits = net(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits.float()
    nll = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
    return float(nll.double().sum())


def unigram_baseline(tokens_dir: Path, manifest: dict[str, Any], stream: np.ndarray) -> Score:
    """Cross-entropy of the scored val tokens under the train unigram distribution (add-one smoothed)."""
    train = read_tokens(tokens_dir / TRAIN_FILE)
    vocab = max(manifest["vocab_size"], int(stream.max()) + 1)
    counts = np.ones(vocab, dtype=np.float64)
    for i in range(0, len(train), _UNIGRAM_CHUNK):
        counts += np.bincount(train[i:i + _UNIGRAM_CHUNK], minlength=vocab)[:vocab]
    log_p = np.log(counts) - np.log(counts.sum())
    return Score(nats=float(-log_p[stream[1:]].sum()), tokens=len(stream) - 1,
                 val_bytes=manifest["val_bytes"])


def weights_fingerprint(net: PreTrainedModel) -> str:
    """sha256 over the tensors (name, dtype, shape, bytes): equal weights saved twice hash alike."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# ---- checkpoints -------------------------------------------------------------------------------

def select_checkpoints(manifest: dict[str, Any] | None, which: str) -> list[dict[str, Any]]:
    if manifest is None or which == "none":
        return []
    entries = manifest.get("checkpoints") or []
    if which == "all":
        return entries
    wanted = {manifest.get("best"), manifest.get("latest")}
    return [e for e in entries if e["dir"] in wanted]


def evaluate_checkpoints(ckpt_dir: Path, entries: list[dict[str, Any]], device: torch.device, scorer,
                         known: dict[str, tuple[str, Score]]) -> dict[str, dict[str, Any]]:
    """Whole-split quality of each checkpoint entry, keyed by its directory name, ascending by step.

    `known` maps a weights fingerprint to an already scored model (name, score). A checkpoint with
    the same weights reuses that score (the final model is usually the latest checkpoint), and
    `same_weights_as` names it.
    """
    results: dict[str, dict[str, Any]] = {}
    for entry in entries:
        path = ckpt_dir / entry["dir"]
        if not path.is_dir():
            raise PipelineError(f"{ckpt_dir / checkpoint.MANIFEST} lists {entry['dir']} but {path} is missing: "
                                "rerun the train stage, or set evaluate.checkpoints=none")
        try:
            checkpoint.verify(path)
        except checkpoint.CorruptCheckpoint as exc:
            raise PipelineError(f"checkpoint {path} is corrupt ({exc}): delete it and rerun the train stage, "
                                "or set evaluate.checkpoints=none") from None
        net = load_model(path, device)
        fp = weights_fingerprint(net)
        twin = known[fp][0] if fp in known else None
        if twin is None:
            known[fp] = (entry["dir"], scorer(net))
        del net
        results[entry["dir"]] = {
            "step": entry["step"], "tokens": entry.get("tokens"),
            **known[fp][1].as_dict(),
            "train_val_loss": entry.get("val_loss"),
            "same_weights_as": twin,
        }
    return results


# ---- samples -----------------------------------------------------------------------------------

def generate_samples(net: PreTrainedModel, tok, prompts: list[str], prompt_ids: list[list[int]], eot: int,
                     ev, device: torch.device) -> list[dict[str, Any]]:
    """One sample per prompt, seeded by evaluate.seed and the prompt's own text.

    With one seed for all, prompts would share one random stream and weak models would write the
    same continuation after each; with a running stream, a sample would change when another prompt does.
    """
    room = _positions(net) - ev.max_new_tokens
    gen = GenerationConfig(do_sample=True, temperature=ev.temperature, top_k=ev.top_k, top_p=1.0,
                           max_new_tokens=ev.max_new_tokens, eos_token_id=eot, pad_token_id=eot,
                           use_cache=True)
    samples = []
    for prompt, ids in zip(prompts, prompt_ids):
        context = ([eot] + ids)[-room:]  # the model saw documents begin after an end-of-text token
        inputs = torch.tensor([context], device=device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(ev.seed + zlib.crc32(prompt.encode("utf-8")))
            out = net.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=gen)
        new = out[0, len(context):].tolist()
        ended = eot in new
        new = new[:new.index(eot)] if ended else new
        samples.append({"prompt": prompt, "completion": tok.decode(new), "new_tokens": len(new),
                        "ended": ended})
    return samples


# ---- description -------------------------------------------------------------------------------

def describe_model(net: PreTrainedModel, model_dir: Path, fingerprint: str) -> dict[str, Any]:
    config = net.config.to_dict()
    keys = ("model_type", "n_layer", "n_embd", "n_head", "n_positions",     # GPT-2's names
            "num_hidden_layers", "hidden_size", "num_attention_heads", "max_position_embeddings",  # Llama/Qwen3's
            "vocab_size")
    return {"dir": str(model_dir), "parameters": count_parameters(net),
            **{k: config[k] for k in keys if k in config}, "weights_sha256": fingerprint}



def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
