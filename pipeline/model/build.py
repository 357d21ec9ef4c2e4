"""The model: a Hugging Face causal LM built from params.model, from scratch, with no download.

    model = build_model(params.model, vocab_size=manifest["vocab_size"], eos_token_id=manifest["eot_token_id"])

model.architecture picks the Transformers class; both save with save_pretrained, load offline with
AutoModelForCausalLM, generate, and attend through PyTorch SDPA:
  gpt2   GPT2LMHeadModel: learned positions, LayerNorm, biases, a GELU MLP (GPT-2 as published)
  qwen3  Qwen3ForCausalLM: rotary positions (RoPE), RMSNorm, QK-norm (an RMSNorm on every head's
         queries and keys), a gated MLP (SwiGLU with silu), no biases; no sliding window, one
         key/value head per query head (no grouped-query attention)

Initial weights come from torch's global RNG: seed it (torch.manual_seed) before calling.
"""
from __future__ import annotations

import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel, Qwen3Config, Qwen3ForCausalLM

from pipeline.core import params as P

# The MLP activation each architecture ships with (model.mlp_activation: auto). GPT-2's is the
# tanh-approximated GELU, as one fused torch kernel ("gelu_new" is five python ops); Qwen3's silu,
# gated, is SwiGLU (Shazeer, arXiv:2002.05202).
OWN_ACTIVATION = {"gpt2": "gelu_pytorch_tanh", "qwen3": "silu"}


def activation_of(model: P.Model) -> str:
    """The MLP's activation function, as Transformers' ACT2FN names it."""
    return OWN_ACTIVATION[model.architecture] if model.mlp_activation == "auto" else model.mlp_activation


def mlp_width(model: P.Model) -> int:
    """MLP hidden units: model.mlp_width, else GPT-2's 4d, or for qwen3's gated MLP (three
    matrices, not two) 8d/3 rounded up to a multiple of 64, about GPT-2's parameter count as in
    Llama (Touvron et al., arXiv:2302.13971, section 2)."""
    if model.mlp_width:
        return model.mlp_width
    if model.architecture == "gpt2":
        return 4 * model.n_embd
    return 64 * math.ceil(8 * model.n_embd / 3 / 64)


def gpt2_config(model: P.Model, vocab_size: int, eos_token_id: int) -> GPT2Config:
    # GPT2Config defaults bos/eos to 50256, an id our tokenizer may not even have.
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=model.context,
        n_embd=model.n_embd,
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_inner=model.mlp_width,  # None: 4 x n_embd, and config.json stays as it always was
        activation_function=activation_of(model),
        resid_pdrop=model.dropout,
        embd_pdrop=model.dropout,
        attn_pdrop=model.dropout,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=model.tie_embeddings,
        use_cache=False,  # training never reuses the KV cache; generation turns it on per call
        attn_implementation="sdpa",
    )


def qwen3_config(model: P.Model, vocab_size: int, eos_token_id: int) -> Qwen3Config:
    heads = model.n_head
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=model.n_embd,
        intermediate_size=mlp_width(model),
        num_hidden_layers=model.n_layer,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=model.n_embd // heads,
        hidden_act=activation_of(model),
        max_position_embeddings=model.context,
        rope_parameters={"rope_type": "default", "rope_theta": model.rope_theta},
        attention_bias=False,
        attention_dropout=model.dropout,  # Qwen3 has no residual or embedding dropout
        use_sliding_window=False,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=model.tie_embeddings,
        use_cache=False,
        attn_implementation="sdpa",
    )


CONFIGS = {"gpt2": (gpt2_config, GPT2LMHeadModel), "qwen3": (qwen3_config, Qwen3ForCausalLM)}


def model_config(model: P.Model, vocab_size: int, eos_token_id: int):
    """The Transformers config params.model describes."""
    return CONFIGS[model.architecture][0](model, vocab_size, eos_token_id)


def build_model(model: P.Model, vocab_size: int, eos_token_id: int) -> PreTrainedModel:
    """A freshly initialized model (fp32, sdpa attention, lm_head tied to the token embedding
    when model.tie_embeddings)."""
    net = CONFIGS[model.architecture][1](model_config(model, vocab_size, eos_token_id))
    tied = net.get_output_embeddings().weight.data_ptr() == net.get_input_embeddings().weight.data_ptr()
    if tied != model.tie_embeddings:
        raise RuntimeError(f"transformers {'tied' if tied else 'did not tie'} lm_head to the token embedding, "
                           f"but model.tie_embeddings is {model.tie_embeddings}")
    return net


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters, position embeddings included; the tied lm_head/wte matrix counts once
    (parameters() yields a shared tensor once), as nanoGPT's 6N FLOP estimate expects."""
    return sum(p.numel() for p in model.parameters())
