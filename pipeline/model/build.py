"""The model: a Hugging Face causal LM built from params.model, from scratch, with no download.

    model = build_model(params.model, vocab_size=manifest["vocab_size"], eos_token_id=manifest["eot_token_id"])

model.architecture picks the Transformers config and class (pipeline/model/architectures/, one file
each); every one saves with save_pretrained, loads offline with AutoModelForCausalLM, generates,
and attends through PyTorch SDPA.

Initial weights come from torch's global RNG: seed it (torch.manual_seed) before calling.
"""
from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel

from pipeline.core import params as P
from pipeline.model.registry import architecture_of


def activation_of(model: P.Model) -> str:
    """The MLP's activation function, as Transformers' ACT2FN names it (model.mlp_activation: auto
    is the architecture's own)."""
    return architecture_of(model).own_activation if model.mlp_activation == "auto" else model.mlp_activation


def mlp_width(model: P.Model) -> int:
    """MLP hidden units: model.mlp_width, else the architecture's default for model.n_embd."""
    return model.mlp_width or architecture_of(model).default_mlp_width(model.n_embd)


def model_config(model: P.Model, vocab_size: int, eos_token_id: int) -> PretrainedConfig:
    """The Transformers config params.model describes."""
    return architecture_of(model).config(model, vocab_size, eos_token_id, activation=activation_of(model),
                                         mlp_width=mlp_width(model))


def build_model(model: P.Model, vocab_size: int, eos_token_id: int) -> PreTrainedModel:
    """A freshly initialized model (fp32, sdpa attention, lm_head tied to the token embedding
    when model.tie_embeddings)."""
    net = architecture_of(model).model_class(model_config(model, vocab_size, eos_token_id))
    tied = net.get_output_embeddings().weight.data_ptr() == net.get_input_embeddings().weight.data_ptr()
    if tied != model.tie_embeddings:
        raise RuntimeError(f"transformers {'tied' if tied else 'did not tie'} lm_head to the token embedding, "
                           f"but model.tie_embeddings is {model.tie_embeddings}")
    return net


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters, position embeddings included; the tied lm_head/wte matrix counts once
    (parameters() yields a shared tensor once), as nanoGPT's 6N FLOP estimate expects."""
    return sum(p.numel() for p in model.parameters())
