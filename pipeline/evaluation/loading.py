"""The model and tokenizer under evaluation: loaded from disk only, checked against the token
files they are scored on, and described.

    tok = load_tokenizer(model_dir)
    check_tokenizer(tok, model_dir, params.paths.tokenizer, manifest)   # same ids as the token files
    net = load_model(model_dir, device)                                # nothing missing, nothing random
    check_fits(net, params, manifest, model_dir)
    check_shape(net, params, model_dir)                                # the model params.model describes
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from pipeline.core import provenance
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.data.tokens import TOKENIZER_FILE
from pipeline.model.build import count_parameters, model_config

# Tokenizer parts that decide which ids a text becomes; post_processor is left out because
# save_pretrained adds an empty template one, and the token files never used it.
_ENCODING_PARTS = ("model", "normalizer", "pre_tokenizer", "added_tokens")
_VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")


def load_tokenizer(model_dir: Path):
    _require_dir(model_dir)
    # AutoTokenizer "loads" a model directory without vocabulary files as an empty tokenizer
    if not any((model_dir / name).is_file() for name in _VOCAB_FILES):
        raise PipelineError(f"no tokenizer in {model_dir} (none of {', '.join(_VOCAB_FILES)}): save the "
                            "tokenizer with the model (tokenizer.save_pretrained into the same directory)")
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, json errors... for one cause
        raise PipelineError(f"no usable tokenizer in {model_dir} ({first_line(exc)}): save the tokenizer "
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
        raise PipelineError(f"the model in {model_dir} cannot be loaded ({first_line(exc)}): it is "
                            "incomplete or corrupt; rerun the train stage or restore the directory") from None
    # from_pretrained fills absent tensors with random values and only warns: refuse that.
    absent = sorted(set(info["missing_keys"]) | {str(k) for k in info["mismatched_keys"]})
    if absent:
        raise PipelineError(f"the weights in {model_dir} lack or mis-shape {len(absent)} tensor(s) "
                            f"({', '.join(absent[:3])}...): the directory is corrupt; rerun the train stage")
    return net.to(device).eval()


def check_fits(net: PreTrainedModel, params: Params, manifest: dict[str, Any], model_dir: Path) -> None:
    """The windows scored, the samples generated and the token ids must all fit the model."""
    room = positions(net)
    if params.model.context > room:
        raise PipelineError(f"model.context ({params.model.context}) exceeds the {room} positions of the "
                            f"model in {model_dir}: set model.context to at most {room}")
    if params.evaluate.max_new_tokens > room - 2:
        raise PipelineError(f"evaluate.max_new_tokens ({params.evaluate.max_new_tokens}) leaves no room for a "
                            f"prompt in the {room} positions of the model in {model_dir}: lower it")
    if net.config.vocab_size < manifest["vocab_size"]:
        raise PipelineError(f"the model in {model_dir} has {net.config.vocab_size} embeddings but the token "
                            f"files use a vocabulary of {manifest['vocab_size']}: it was trained on other data")


# The params.model key each shape key is set from (pipeline/model/architectures/). Not model.context:
# it is also the window scored, which may be shorter than the model's positions (check_fits).
_SHAPE_PARAMS = {"model_type": "architecture", "num_hidden_layers": "n_layer", "hidden_size": "n_embd",
                 "num_attention_heads": "n_head"}


def check_shape(net: PreTrainedModel, params: Params, model_dir: Path) -> None:
    """The model must be the one params.model describes: eval.json records both, and a model
    trained with other params (stages run by hand, out of order) would be reported as this one."""
    expected = model_config(params.model, net.config.vocab_size, net.config.eos_token_id)
    differ = [f"model.{key} gives {name} {getattr(expected, name)!r}, the model has {getattr(net.config, name)!r}"
              for name, key in _SHAPE_PARAMS.items() if getattr(expected, name) != getattr(net.config, name)]
    if differ:
        raise PipelineError(f"the model in {model_dir} is not the one params.model describes ({'; '.join(differ)}): "
                            "rerun the train stage with these params, or set model.* to the model's")


def positions(net: PreTrainedModel) -> int:
    """The longest sequence the model reads (GPT-2's n_positions, by Transformers' common name)."""
    return net.config.max_position_embeddings


def weights_fingerprint(net: PreTrainedModel) -> str:
    """sha256 over the tensors (name, dtype, shape, bytes): equal weights saved twice hash alike."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# The model's shape under Transformers' common config names: GPT-2's config maps them onto its own
# (n_layer, n_embd, ...) through its attribute_map, so every architecture records the same keys.
SHAPE_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "max_position_embeddings",
              "vocab_size")


def describe_model(net: PreTrainedModel, model_dir: Path, fingerprint: str) -> dict[str, Any]:
    return {"dir": str(model_dir), "parameters": count_parameters(net),
            **{k: getattr(net.config, k) for k in SHAPE_KEYS}, "weights_sha256": fingerprint}


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise PipelineError(f"model directory {path} not found: run the train stage, or set paths.model "
                            "to a directory written by save_pretrained")


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
