"""FLOPs and memory of training a GPT-2 configuration, from its params alone.

    flops_per_token(params.model, vocab_size)       # training FLOPs per token (forward + backward)
    parameter_count(params.model, vocab_size)       # as count_parameters() of the built model
    training_memory(params.model, vocab_size, micro_batch, "fp16", False, activation="gelu_pytorch_tanh")
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from pipeline.params import Model


def parameter_count(model: Model, vocab_size: int, *, position_embeddings: bool = True) -> int:
    """Parameters of GPT2LMHeadModel with tied embeddings (the lm_head shares wte)."""
    d, layers = model.n_embd, model.n_layer
    # per block: ln_1, c_attn (d x 3d + bias), attn c_proj, ln_2, c_fc (d x 4d), mlp c_proj
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    total = layers * block + 2 * d + vocab_size * d
    return total + (model.context * d if position_embeddings else 0)


def flops_per_token(model: Model, vocab_size: int) -> float:
    """Training FLOPs per token as nanoGPT's estimate_mfu counts them: 6N + 12*L*H*Q*T.

    N keeps the tied token embedding (it is the lm_head matmul, ~27% of GPT-2 small's FLOPs) and
    drops the position embedding (a lookup, no matmul); the second term is attention's QK^T and AV.
    """
    n = parameter_count(model, vocab_size, position_embeddings=False)
    head_dim = model.n_embd // model.n_head
    return 6.0 * n + 12.0 * model.n_layer * model.n_head * head_dim * model.context


def mfu(tokens_per_second: float, flops_per_token_: float, peak_flops: float, devices: int = 1) -> float:
    """Model FLOPs utilization, as PaLM (arXiv:2204.02311, appendix B) and nanoGPT define it: model
    training FLOPs per second over the devices' peak. Recompute from activation checkpointing is
    not model FLOPs, so it lowers MFU rather than counting as work: the estimate and the train
    stage use this one definition, so their MFUs compare."""
    return tokens_per_second * flops_per_token_ / (peak_flops * devices)


# ---- memory -------------------------------------------------------------------------------------
# Peak bytes of one training micro-step of GPT2LMHeadModel as pipeline/step.py runs it: fp32 weights
# (the master copy), autocast for fp16/bf16, fused AdamW, gradients kept across accumulation, the
# logits alive until F.cross_entropy's fp32 log-softmax is made from them. Every term below is a
# tensor autograd saves (or the loss backward allocates); tests/test_compute.py checks the sum
# against torch's MemTracker on CPU over that very step.

# one kernel: saves its input h, and c_proj saves its output
FUSED_ACTIVATIONS = frozenset({"gelu", "gelu_pytorch_tanh", "relu", "silu"})


@dataclass(frozen=True)
class Memory:
    """Peak training memory of one device, by part (bytes)."""

    weights: int          # fp32 parameters
    gradients: int        # fp32, alive across gradient accumulation
    optimizer: int        # AdamW exp_avg + exp_avg_sq, fp32
    autocast_cache: int   # fp16/bf16 copies of the matmul weights autocast keeps for backward
    activations: int      # tensors saved for backward, all layers (one block input each when checkpointing)
    loss: int             # logits and the fp32 log-softmax, or its gradients, or the recomputed block
    runtime: int          # CUDA context and library workspaces, or the process itself

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def training_memory(model: Model, vocab_size: int, micro_batch_size: int, precision: str,
                    checkpointing: bool, *, activation: str, device_kind: str = "cuda",
                    attention: str = "sdpa", runtime_bytes: int = 0) -> Memory:
    """Peak memory of a training micro-step on one device.

    activation is the config's activation_function. device_kind matters under autocast for
    gelu_new: CUDA runs its pow in fp32 (the torch.amp op reference lists pow), CPU keeps fp16/bf16.
    """
    d, layers, heads, t = model.n_embd, model.n_layer, model.n_head, model.context
    tokens = micro_batch_size * t
    n = parameter_count(model, vocab_size)
    low = precision != "fp32"
    a = 2 if low else 4                      # bytes of a value autocast computes in
    up = 4 if low and device_kind == "cuda" else a   # what follows pow under CUDA autocast

    # per token of one block; the residual stream stays fp32 (embeddings are fp32, adds promote)
    if activation in FUSED_ACTIVATIONS:
        mlp = 4 * d * 2 * a
    elif activation == "gelu_new":  # 0.5*h*(1+tanh(c*(h+0.044715*h**3))) as separate ops
        mlp = 4 * d * (a + up + up + a + a)  # h, tanh(.), 1+tanh(.), 0.5*h, the product (cast for c_proj)
    else:
        raise ValueError(f"no memory model for activation_function {activation!r}")
    block = (4 * d + 8          # ln_1 input + mean/rstd
             + a * d            # c_attn input (ln_1 output, cast)
             + 3 * a * d        # q, k, v
             + a * d            # attention output = c_proj input
             + 4 * d + 8        # ln_2 input + mean/rstd
             + a * d            # c_fc input
             + mlp)
    if attention == "sdpa":
        block += 4 * heads      # logsumexp of the fused kernel
    else:
        # scores + the fp32 causal mask promote to fp32, softmax saves that, AV saves its cast back
        block += heads * t * (4 + (a if low else 0))
    head = 4 * d + 8 + a * d    # ln_f input + stats, lm_head input
    # pipeline/step.py keeps only the loss: the logits live until the fp32 log-softmax is made from
    # them, then only what autograd saved (the log-softmax) and the loss gradients exist
    logits = a * vocab_size + 4 * vocab_size
    loss_backward = 12 * vocab_size  # fp32 log-softmax, nll_loss grad, log-softmax grad
    block_backward = 8 * d * a       # gradients in flight inside one block's backward
    layer_casts = 12 * d * d + 9 * d if low else 0
    head_casts = vocab_size * d if low else 0

    if checkpointing:
        # one block input each; backward meets the loss first, then recomputes one block at a time,
        # and autocast's weight cache is gone by then (it is cleared when the autocast region exits)
        saved = layers * 4 * d + head
        peak_tokens = max(logits, loss_backward, block + block_backward)
        casts = head_casts + (layer_casts if block + block_backward > loss_backward else 0)
    else:
        saved = layers * block + head
        peak_tokens = max(logits, loss_backward, block_backward)
        casts = head_casts + layers * layer_casts
    return Memory(weights=4 * n, gradients=4 * n, optimizer=8 * n, autocast_cache=2 * casts,
                  activations=tokens * saved, loss=tokens * peak_tokens, runtime=runtime_bytes)
