"""gpt2: GPT2LMHeadModel, GPT-2 as published: learned positions, LayerNorm, biases, a GELU MLP.

Its matrices are Transformers' Conv1D, stored (in, out); pipeline/engine/step.py orients Muon's
step size for that layout.
"""
from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.core.params import Model
from pipeline.model.spec import FUSED_ACTIVATIONS, Architecture, BlockMemory, MicroStep

NAME = "gpt2"


def config(model: Model, vocab_size: int, eos_token_id: int, *, activation: str, mlp_width: int) -> GPT2Config:
    # GPT2Config defaults bos/eos to 50256, an id our tokenizer may not even have.
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=model.context,
        n_embd=model.n_embd,
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_inner=model.mlp_width,  # None: 4 x n_embd (= mlp_width), and config.json stays as it always was
        activation_function=activation,
        resid_pdrop=model.dropout,
        embd_pdrop=model.dropout,
        attn_pdrop=model.dropout,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=model.tie_embeddings,
        use_cache=False,  # training never reuses the KV cache; generation turns it on per call
        attn_implementation="sdpa",
    )


def block_matrices(model: Model, width: int) -> list[tuple[int, int]]:
    d = model.n_embd
    return [(d, 3 * d), (d, d), (d, width), (width, d)]  # c_attn, attn c_proj, c_fc, mlp c_proj


def block_vectors(model: Model, width: int) -> int:
    d = model.n_embd
    return 2 * d + 3 * d + d + 2 * d + width + d  # ln_1, c_attn bias, c_proj bias, ln_2, c_fc bias, c_proj bias


def block_memory(step: MicroStep) -> BlockMemory:
    """Bytes per token one GPT-2 block saves, those of ln_f + lm_head input, and the weights (and
    biases) autocast casts per block."""
    d, w, heads, t, a = step.model.n_embd, step.mlp_width, step.model.n_head, step.model.context, step.value_bytes
    up = 4 if step.autocast and step.device_kind == "cuda" else a   # what follows pow under CUDA autocast
    # per token of one block; the residual stream stays fp32 (embeddings are fp32, adds promote)
    if step.activation in FUSED_ACTIVATIONS:
        mlp = w * 2 * a
    elif step.activation == "gelu_new":  # 0.5*h*(1+tanh(c*(h+0.044715*h**3))) as separate ops
        mlp = w * (a + up + up + a + a)  # h, tanh(.), 1+tanh(.), 0.5*h, the product (cast for c_proj)
    else:
        raise ValueError(f"no memory model for activation_function {step.activation!r}")
    block = (4 * d + 8          # ln_1 input + mean/rstd
             + a * d            # c_attn input (ln_1 output, cast)
             + 3 * a * d        # q, k, v
             + a * d            # attention output = c_proj input
             + 4 * d + 8        # ln_2 input + mean/rstd
             + a * d            # c_fc input
             + mlp)
    if step.attention == "sdpa":
        block += 4 * heads      # logsumexp of the fused kernel
    else:
        # scores + the fp32 causal mask promote to fp32, softmax saves that, AV saves its cast back
        block += heads * t * (4 + (a if step.autocast else 0))
    head = 4 * d + 8 + a * d    # ln_f input + stats, lm_head input
    layer_casts = (4 * d * d + 2 * d * w) + (5 * d + w) if step.autocast else 0  # matrices + biases (addmm)
    # gradients in flight inside one block's backward; measured, and it folds in what a recomputed
    # block shares with the checkpoint's saved input
    return BlockMemory(saved=block, head=head, layer_casts=layer_casts, backward=step.tokens * 8 * d * a,
                       recompute_overlap=0)


SPEC = Architecture(
    name=NAME,
    model_class=GPT2LMHeadModel,
    config=config,
    # the tanh-approximated GELU, as one fused torch kernel ("gelu_new" is five python ops)
    own_activation="gelu_pytorch_tanh",
    default_mlp_width=lambda n_embd: 4 * n_embd,
    block_matrices=block_matrices,
    block_vectors=block_vectors,
    final_norm_parameters=lambda n_embd: 2 * n_embd,  # ln_f
    learned_positions=True,
    block_memory=block_memory,
)
