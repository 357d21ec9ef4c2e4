"""The model: a Hugging Face GPT-2 built from params.model, from scratch, with no download.

    model = build_model(params.model, vocab_size=manifest["vocab_size"], eos_token_id=manifest["eot_token_id"])

Initial weights come from torch's global RNG: seed it (torch.manual_seed) before calling.
"""
from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline import params as P


def gpt2_config(model: P.Model, vocab_size: int, eos_token_id: int) -> GPT2Config:
    # GPT2Config defaults bos/eos to 50256, an id our tokenizer may not even have.
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=model.context,
        n_embd=model.n_embd,
        n_layer=model.n_layer,
        n_head=model.n_head,
        # GPT-2's tanh-approximated GELU, as one fused torch kernel ("gelu_new" is five python ops)
        activation_function="gelu_pytorch_tanh",
        resid_pdrop=model.dropout,
        embd_pdrop=model.dropout,
        attn_pdrop=model.dropout,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=True,
        use_cache=False,  # training never reuses the KV cache; generation turns it on per call
        attn_implementation="sdpa",
    )


def build_model(model: P.Model, vocab_size: int, eos_token_id: int) -> GPT2LMHeadModel:
    """A freshly initialized GPT2LMHeadModel (fp32, sdpa attention, lm_head tied to wte)."""
    net = GPT2LMHeadModel(gpt2_config(model, vocab_size, eos_token_id))
    if net.lm_head.weight.data_ptr() != net.transformer.wte.weight.data_ptr():
        raise RuntimeError("transformers did not tie lm_head to the token embedding")
    return net


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters, position embeddings included; the tied lm_head/wte matrix counts once
    (parameters() yields a shared tensor once), as nanoGPT's 6N FLOP estimate expects."""
    return sum(p.numel() for p in model.parameters())
