"""The rotary decoder family: Llama's form and those that share it (Touvron et al., arXiv:2302.13971):
rotary positions (RoPE), RMSNorm before attention and before the MLP, one key/value head per query
head (no grouped-query attention), no sliding window. What its members differ in is data, flags of
RotaryDecoder (QK-norm, a gated MLP, biases), as litgpt's config.py keeps architectures: an
architecture of this form is one call,

    SPEC = rotary_decoder(RotaryDecoder(name, SomeForCausalLM, SomeConfig, qk_norm=True))

and its parameters, FLOPs and training memory follow from its flags, derived once here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from pipeline.core.params import Model
from pipeline.model.spec import FUSED_ACTIVATIONS, Architecture, BlockMemory, MicroStep

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class RotaryDecoder:
    """One member of the family: its Transformers classes and what sets it apart."""

    name: str                          # model.architecture, and the name of its file
    model_class: type[PreTrainedModel]
    config_class: type[PretrainedConfig]
    qk_norm: bool = False              # an RMSNorm on every head's queries and keys (Qwen3)
    gated: bool = True                 # MLP act(x Wg) * x Wu, then Wd (SwiGLU with silu); False: act(x Wu) Wd
    activation: str = "silu"           # what model.mlp_activation: auto means (Transformers' ACT2FN name)
    attention_bias: bool = False       # biases on q, k, v and o (the config's attention_bias)
    mlp_bias: bool = False             # biases on gate, up and down (the config's mlp_bias)
    # the config's other keys this member needs (e.g. a sliding window turned off)
    config_extra: dict[str, Any] = field(default_factory=dict)


def rotary_decoder(member: RotaryDecoder) -> Architecture:
    """The Architecture the pipeline asks (pipeline/model/spec.py) for one member of the family."""
    return Architecture(
        name=member.name,
        model_class=member.model_class,
        config=partial(_config, member),
        own_activation=member.activation,
        default_mlp_width=partial(_default_mlp_width, member),
        block_matrices=partial(_block_matrices, member),
        block_vectors=partial(_block_vectors, member),
        final_norm_parameters=lambda n_embd: n_embd,  # norm
        learned_positions=False,
        block_memory=partial(_block_memory, member),
        params_problems=partial(_params_problems, member),
    )


def _config(member: RotaryDecoder, model: Model, vocab_size: int, eos_token_id: int, *, activation: str,
            mlp_width: int) -> PretrainedConfig:
    heads = model.n_head
    biases = {"mlp_bias": True} if member.mlp_bias else {}   # a key only the classes that have such biases take
    return member.config_class(
        vocab_size=vocab_size,
        hidden_size=model.n_embd,
        intermediate_size=mlp_width,
        num_hidden_layers=model.n_layer,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=model.n_embd // heads,
        hidden_act=activation,
        max_position_embeddings=model.context,
        rope_parameters={"rope_type": "default", "rope_theta": model.rope_theta},
        attention_bias=member.attention_bias,
        attention_dropout=model.dropout,  # the family has no residual or embedding dropout
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=model.tie_embeddings,
        use_cache=False,  # training never reuses the KV cache; generation turns it on per call
        attn_implementation="sdpa",
        **biases,
        **member.config_extra,
    )


def _default_mlp_width(member: RotaryDecoder, n_embd: int) -> int:
    """4d, as GPT-2's; gated, 8d/3 rounded up to a multiple of 64: its three matrices then hold about
    as many parameters as two at 4d, as in Llama (Touvron et al., arXiv:2302.13971, section 2)."""
    return 64 * math.ceil(8 * n_embd / 3 / 64) if member.gated else 4 * n_embd


def _block_matrices(member: RotaryDecoder, model: Model, width: int) -> list[tuple[int, int]]:
    d = model.n_embd
    gate = [(width, d)] if member.gated else []
    return [(d, d)] * 4 + gate + [(width, d), (d, width)]  # Linear (out, in): q, k, v, o, (gate), up, down


def _biases(member: RotaryDecoder, model: Model, width: int) -> int:
    d = model.n_embd
    mlp = (2 if member.gated else 1) * width + d
    return (4 * d if member.attention_bias else 0) + (mlp if member.mlp_bias else 0)


def _block_vectors(member: RotaryDecoder, model: Model, width: int) -> int:
    d = model.n_embd
    qk_norm = 2 * (d // model.n_head) if member.qk_norm else 0    # q_norm, k_norm: one gain per head dim
    return 2 * d + qk_norm + _biases(member, model, width)        # input/post-attention RMSNorm


def _block_memory(member: RotaryDecoder, step: MicroStep) -> BlockMemory:
    """Bytes per token one block saves, those of the final norm + lm_head input, and the weights
    (and biases) autocast casts per block. The RMSNorm is Transformers' python one (to fp32, pow,
    mean, rsqrt, two muls): it saves its input, the 1/rms per row and the normalized input.
    Autocast caches only weights, so each of q/k/v_proj and gate/up_proj casts the same norm output
    anew and saves its own copy. QK-norm turns q and k to fp32 and back; RoPE multiplies by cos and
    sin, which need no gradient, so it saves nothing per token; a bias adds no saved tensor. The
    activation saves one tensor (FUSED_ACTIVATIONS) and the matmul after it another; gated, the
    gate x up product saves both factors."""
    if step.attention != "sdpa":
        raise ValueError(f"no memory model for {member.name} with attention {step.attention!r}")
    if step.activation not in FUSED_ACTIVATIONS:
        raise ValueError(f"no memory model for hidden_act {step.activation!r}")
    d, w, heads, a = step.model.n_embd, step.mlp_width, step.model.n_head, step.value_bytes
    norm = 4 * d + 4 + 4 * d             # input (fp32 residual), 1/rms, normalized
    if step.autocast:
        qkv_in = 3 * a * d               # three casts of the norm output
        qk_norm = 2 * (4 * d + 4 * heads + a * d)  # fp32 copy, 1/rms, normalized cast back (for the gain)
        sdpa = 2 * a * d + a * d + a * d + 4 * heads   # q, k cast for the kernel, v, output, logsumexp
        mlp_in = 2 * a * d
    else:
        qkv_in = 4 * d                   # the norm output, shared
        qk_norm = 2 * (4 * d + 4 * heads + 4 * d)  # projection output, 1/rms, normalized
        sdpa = 4 * 4 * d + 4 * heads     # q, k after RoPE, v, output, logsumexp
        mlp_in = 4 * d
    block = (norm + qkv_in + (qk_norm if member.qk_norm else 0)
             + sdpa                      # the kernel's output is laid out (B, T, H, hd): o_proj's input
             + norm + mlp_in
             + (4 if member.gated else 2) * a * w)  # gate output (or relu's), act output, up output, their
                                                     # product; not gated: up output (or relu's), act output
    head = norm + a * d                  # final norm, lm_head input (its cast, or the gain's output)
    matrices = sum(rows * cols for rows, cols in _block_matrices(member, step.model, w))
    layer_casts = matrices + _biases(member, step.model, w) if step.autocast else 0
    # recomputing a block, its input is the checkpoint's saved one and the final norm's saved
    # tensors are gone (measured)
    return BlockMemory(saved=block, head=head, layer_casts=layer_casts, backward=_backward(step),
                       recompute_overlap=step.tokens * (4 * d + head))


def _backward(step: MicroStep) -> int:
    """Bytes in flight while a block runs backward (beyond its saved tensors): the gradient of its
    output (fp32) and, at down_proj, its cast, the gradient of down_proj's input and the weight
    gradient before it is added to .grad; or, one op later, at the gate x up product (not gated:
    the activation), the gradients of both its inputs (its input's and its output's). A tied
    lm_head's weight gradient waits for the embedding's (autograd sums both before accumulating),
    all through the blocks' backward."""
    d, w, a, tokens = step.model.n_embd, step.mlp_width, step.value_bytes, step.tokens
    down = tokens * (4 * d + (a * d if step.autocast else 0) + a * w) + a * d * w
    product = tokens * (4 * d + 2 * a * w)
    parked = 4 * step.vocab_size * d if step.model.tie_embeddings else 0
    return max(down, product) + parked


def _params_problems(member: RotaryDecoder, model: Model) -> list[str]:
    head_dim = model.n_embd // model.n_head
    if head_dim % 2:
        return [f"{member.name} rotates pairs of each head's dimensions: model.n_embd / model.n_head ({head_dim}) "
                "must be even"]
    return []
