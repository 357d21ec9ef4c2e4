"""FLOPs and memory of training a model configuration, from its params alone.

    flops_per_token(params.model, vocab_size)       # training FLOPs per token (forward + backward)
    parameter_count(params.model, vocab_size)       # as count_parameters() of the built model
    training_memory(params.model, vocab_size, micro_batch, "fp16", False, optimizer=params.train.optimizer)
    optimizer_flops_per_step(params.model, vocab_size, params.train.optimizer)   # Muon's Newton-Schulz

Every function dispatches on model.architecture (gpt2 | qwen3, see pipeline/model/build.py) and, where
the optimizer matters, on train.optimizer (adamw | muon, see pipeline/engine/step.py).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from pipeline.model.build import activation_of, mlp_width
from pipeline.core.params import Model

# torch.optim.Muon's defaults (torch/optim/_muon.py, from Keller Jordan's Muon): five quintic
# Newton-Schulz iterations
NS_STEPS = 5
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def newton_schulz_precision(device_kind: str, bf16_native: bool) -> str:
    """What Muon's Newton-Schulz iterations run in on a device: bf16, as torch.optim.Muon does, where
    the device multiplies bf16 natively; else fp16 on a GPU (a T4's tensor cores) and fp32 on a CPU.
    An emulated bf16 matmul is several times slower than fp32 on a CPU without AVX512-bf16/AMX and
    has no tensor cores on a T4. The iterate is normalized to spectral norm <= 1 first, so fp16's
    range holds it (pipeline/engine/step.py runs it)."""
    if bf16_native:
        return "bf16"
    return "fp16" if device_kind == "cuda" else "fp32"


def _untied(model: Model) -> bool:
    return not model.tie_embeddings


def hidden_matrix_shapes(model: Model) -> list[tuple[int, int]]:
    """(rows, cols) of every hidden 2-D weight (pipeline.engine.step.hidden_matrices: what Muon trains),
    all layers."""
    d, w = model.n_embd, mlp_width(model)
    if model.architecture == "gpt2":   # Conv1D (in, out): c_attn, attn c_proj, c_fc, mlp c_proj
        block = [(d, 3 * d), (d, d), (d, w), (w, d)]
    else:                                # Linear (out, in): q, k, v, o, gate, up, down
        block = [(d, d)] * 4 + [(w, d), (w, d), (d, w)]
    return block * model.n_layer


def vector_parameters(model: Model) -> int:
    """Biases and norm gains, all layers and the final norm: parameters that are no matmul."""
    d, w, hd = model.n_embd, mlp_width(model), model.n_embd // model.n_head
    if model.architecture == "gpt2":  # ln_1, c_attn bias, c_proj bias, ln_2, c_fc bias, c_proj bias; ln_f
        return model.n_layer * (2 * d + 3 * d + d + 2 * d + w + d) + 2 * d
    return model.n_layer * (2 * d + 2 * hd) + d   # input/post-attention RMSNorm, q_norm, k_norm; norm


def parameter_count(model: Model, vocab_size: int, *, position_embeddings: bool = True) -> int:
    """Parameters of the built model: GPT2LMHeadModel or Qwen3ForCausalLM, the lm_head counted
    once when tied to the token embedding."""
    d = model.n_embd
    total = sum(r * c for r, c in hidden_matrix_shapes(model)) + vector_parameters(model)
    total += vocab_size * d * (2 if _untied(model) else 1)
    if model.architecture == "gpt2" and position_embeddings:
        total += model.context * d
    return total


def hidden_matrix_parameters(model: Model) -> int:
    return sum(r * c for r, c in hidden_matrix_shapes(model))


def flops_per_token(model: Model, vocab_size: int) -> float:
    """Training FLOPs per token as nanoGPT's estimate_mfu counts them: 6N + 12*L*H*Q*T.

    N keeps the lm_head matrix (tied or not: ~27% of GPT-2 small's FLOPs) and drops lookups: the
    position embedding and, when untied, the token embedding; the second term is attention's
    QK^T and AV (RoPE, norms and activations are elementwise and not counted, as in nanoGPT).
    """
    n = parameter_count(model, vocab_size, position_embeddings=False)
    if _untied(model):
        n -= vocab_size * model.n_embd
    head_dim = model.n_embd // model.n_head
    return 6.0 * n + 12.0 * model.n_layer * model.n_head * head_dim * model.context


def optimizer_flops_per_step(model: Model, vocab_size: int, optimizer: str) -> float:
    """FLOPs of one optimizer step beyond elementwise work: Muon's Newton-Schulz iterations, per
    (m x n) matrix with m <= n NS_STEPS x (X X^T: 2m^2 n, A A: 2m^3, B X: 2m^2 n); AdamW's are
    elementwise (0 here). They are not model FLOPs (as recompute is not): MFU does not count them,
    so with muon a calibrated MFU comes out lower, and an estimate from a catalog MFU should add
    them (at the rate of newton_schulz_precision) per optimizer step."""
    if optimizer == "adamw":
        return 0.0
    if optimizer != "muon":
        raise ValueError(f"no FLOP model for optimizer {optimizer!r}")
    total = 0.0
    for rows, cols in hidden_matrix_shapes(model):
        m, n = min(rows, cols), max(rows, cols)
        total += NS_STEPS * (4 * m * m * n + 2 * m ** 3)
    return total


def mfu(tokens_per_second: float, flops_per_token_: float, peak_flops: float, devices: int = 1) -> float:
    """Model FLOPs utilization, as PaLM (arXiv:2204.02311, appendix B) and nanoGPT define it: model
    training FLOPs per second over the devices' peak. Recompute from activation checkpointing is
    not model FLOPs, so it lowers MFU rather than counting as work: the estimate and the train
    stage use this one definition, so their MFUs compare."""
    return tokens_per_second * flops_per_token_ / (peak_flops * devices)


# ---- memory -------------------------------------------------------------------------------------
# Peak bytes of one training micro-step as pipeline/engine/step.py runs it: fp32 weights (the master copy),
# autocast for fp16/bf16, gradients kept across accumulation, the logits alive until
# F.cross_entropy's fp32 log-softmax is made from them, then the optimizer update. Every term below
# is a tensor autograd saves (or the loss backward or the optimizer allocates);
# tests/test_compute.py checks the sum against torch's MemTracker on CPU over that very step, for
# each architecture and optimizer.

# one kernel: saves its input h, and c_proj saves its output. relu2 (ReLUSquaredActivation) is two
# ops, relu then square, but square saves relu's output, the tensor relu saves: one tensor too.
FUSED_ACTIVATIONS = frozenset({"gelu", "gelu_pytorch_tanh", "relu", "silu", "relu2"})


@dataclass(frozen=True)
class Memory:
    """Peak training memory of one device, by part (bytes)."""

    weights: int          # fp32 parameters
    gradients: int        # fp32, alive across gradient accumulation
    optimizer: int        # AdamW exp_avg + exp_avg_sq (fp32); Muon one momentum buffer per hidden matrix
    autocast_cache: int   # fp16/bf16 copies of the matmul weights autocast keeps for backward
    activations: int      # tensors saved for backward, all layers (one block input each when checkpointing)
    loss: int             # logits and the fp32 log-softmax, or its gradients, or the recomputed block
    optimizer_step: int   # what the update needs beyond the forward/backward peak (Muon's Newton-Schulz)
    runtime: int          # CUDA context and library workspaces, or the process itself

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def optimizer_state_bytes(model: Model, vocab_size: int, optimizer: str) -> int:
    n = parameter_count(model, vocab_size)
    if optimizer == "adamw":
        return 8 * n
    if optimizer == "muon":  # torch.optim.Muon: momentum_buffer; the rest fused AdamW
        hidden = hidden_matrix_parameters(model)
        return 4 * hidden + 8 * (n - hidden)
    raise ValueError(f"no memory model for optimizer {optimizer!r}")


def newton_schulz_workspace(model: Model, precision: str = "bf16") -> int:
    """Peak bytes Muon allocates while it orthogonalizes its largest matrix (one at a time, m <= n)
    with the iterations in `precision` (e bytes a value): the fp32 Nesterov update (4mn), the
    iterate X (e mn), X X^T and the polynomial in it (e m^2 each) and the next iterate (e mn), all
    alive at once."""
    e = ELEMENT_BYTES[precision]
    return max(4 * m * n + e * (2 * m * n + 2 * m * m) for m, n in
               ((min(r, c), max(r, c)) for r, c in hidden_matrix_shapes(model)))


def training_memory(model: Model, vocab_size: int, micro_batch_size: int, precision: str,
                    checkpointing: bool, *, optimizer: str = "adamw", activation: str | None = None,
                    device_kind: str = "cuda", attention: str = "sdpa", runtime_bytes: int = 0,
                    newton_schulz: str = "bf16") -> Memory:
    """Peak memory of a training micro-step on one device.

    optimizer is train.optimizer; newton_schulz what Muon iterates in (newton_schulz_precision). activation is the MLP's activation function (None: the one
    params.model builds, pipeline.model.build.activation_of). device_kind matters under autocast for
    gelu_new: CUDA runs its pow in fp32 (the torch.amp op reference lists pow), CPU keeps fp16/bf16.
    """
    activation = activation or activation_of(model)
    d, layers, t = model.n_embd, model.n_layer, model.context
    tokens = micro_batch_size * t
    n = parameter_count(model, vocab_size)
    low = precision != "fp32"
    a = 2 if low else 4                      # bytes of a value autocast computes in
    if model.architecture == "gpt2":
        block, head, layer_casts = _gpt2_block(model, activation, attention, low, a, device_kind)
        backward = tokens * 8 * d * a    # gradients in flight inside one block's backward
        recompute_overlap = 0
    elif model.architecture == "qwen3":
        block, head, layer_casts = _qwen3_block(model, activation, attention, low, a)
        backward = _qwen3_backward(model, vocab_size, tokens, low, a)
        # recomputing a block, its input is the checkpoint's saved one and the final norm's saved
        # tensors are gone (measured; the gpt2 terms above fold the same effects into 8da)
        recompute_overlap = tokens * (4 * d + head)
    else:
        raise ValueError(f"no memory model for architecture {model.architecture!r}")
    # pipeline/engine/step.py keeps only the loss: the logits live until the fp32 log-softmax is made from
    # them, then only what autograd saved (the log-softmax) and the loss gradients exist
    logits = tokens * (a * vocab_size + 4 * vocab_size)
    loss_backward = tokens * 12 * vocab_size  # fp32 log-softmax, nll_loss grad, log-softmax grad
    head_casts = vocab_size * d if low else 0

    if checkpointing:
        # one block input each; backward meets the loss first, then recomputes one block at a time,
        # and autocast's weight cache is gone by then (it is cleared when the autocast region exits)
        saved = layers * 4 * d + head
        recompute = tokens * block + backward - recompute_overlap
        peak = max(logits, loss_backward, recompute)
        casts = head_casts + (layer_casts if recompute > loss_backward else 0)
    else:
        saved = layers * block + head
        peak = max(logits, loss_backward, backward)
        casts = head_casts + layers * layer_casts
    autocast_cache, activations, loss = 2 * casts, tokens * saved, peak
    # the update runs after backward freed the activations: only what it needs beyond them counts
    step = newton_schulz_workspace(model, newton_schulz) if optimizer == "muon" else 0
    return Memory(weights=4 * n, gradients=4 * n, optimizer=optimizer_state_bytes(model, vocab_size, optimizer),
                  autocast_cache=autocast_cache, activations=activations, loss=loss,
                  optimizer_step=max(0, step - (autocast_cache + activations + loss)), runtime=runtime_bytes)


def _gpt2_block(model: Model, activation: str, attention: str, low: bool, a: int,
                device_kind: str) -> tuple[int, int, int]:
    """Bytes per token one GPT-2 block saves, those of ln_f + lm_head input, and the weights
    (and biases) autocast casts per block."""
    d, w, heads, t = model.n_embd, mlp_width(model), model.n_head, model.context
    up = 4 if low and device_kind == "cuda" else a   # what follows pow under CUDA autocast
    # per token of one block; the residual stream stays fp32 (embeddings are fp32, adds promote)
    if activation in FUSED_ACTIVATIONS:
        mlp = w * 2 * a
    elif activation == "gelu_new":  # 0.5*h*(1+tanh(c*(h+0.044715*h**3))) as separate ops
        mlp = w * (a + up + up + a + a)  # h, tanh(.), 1+tanh(.), 0.5*h, the product (cast for c_proj)
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
    layer_casts = (4 * d * d + 2 * d * w) + (5 * d + w) if low else 0  # matrices + biases (addmm)
    return block, head, layer_casts


def _qwen3_block(model: Model, activation: str, attention: str, low: bool, a: int) -> tuple[int, int, int]:
    """As _gpt2_block, for Qwen3's decoder layer. Its RMSNorm is Transformers' python one (to fp32,
    pow, mean, rsqrt, two muls): it saves its input, the 1/rms per row and the normalized input.
    Autocast caches only weights, so each of q/k/v_proj and gate/up_proj casts the same norm output
    anew and saves its own copy. QK-norm turns q and k to fp32 and back; RoPE multiplies by cos and
    sin, which need no gradient, so it saves nothing per token."""
    if attention != "sdpa":
        raise ValueError(f"no memory model for qwen3 with attention {attention!r}")
    if activation not in FUSED_ACTIVATIONS:
        raise ValueError(f"no memory model for hidden_act {activation!r}")
    d, w, heads = model.n_embd, mlp_width(model), model.n_head
    norm = 4 * d + 4 + 4 * d             # input (fp32 residual), 1/rms, normalized
    if low:
        qkv_in = 3 * a * d               # three casts of the norm output
        qk_norm = 2 * (4 * d + 4 * heads + a * d)  # fp32 copy, 1/rms, normalized cast back (for the gain)
        sdpa = 2 * a * d + a * d + a * d + 4 * heads   # q, k cast for the kernel, v, output, logsumexp
        mlp_in = 2 * a * d
    else:
        qkv_in = 4 * d                   # the norm output, shared
        qk_norm = 2 * (4 * d + 4 * heads + 4 * d)  # projection output, 1/rms, normalized
        sdpa = 4 * 4 * d + 4 * heads     # q, k after RoPE, v, output, logsumexp
        mlp_in = 4 * d
    block = (norm + qkv_in + qk_norm + sdpa  # the kernel's output is laid out (B, T, H, hd): o_proj's input
             + norm + mlp_in
             + 4 * a * w)                # gate output (or relu's), act output, up output, their product
    head = norm + a * d                  # final norm, lm_head input (its cast, or the gain's output)
    layer_casts = 4 * d * d + 3 * d * w if low else 0
    return block, head, layer_casts


def _qwen3_backward(model: Model, vocab_size: int, tokens: int, low: bool, a: int) -> int:
    """Bytes in flight while a Qwen3 block runs backward (beyond its saved tensors): the gradient
    of its output (fp32) and, at down_proj, its cast, the gradient of the MLP product and the
    weight gradient before it is added to .grad; or, one op later, at the gate x up product, the
    gradients of both factors. A tied lm_head's weight gradient waits for the embedding's (autograd
    sums both before accumulating), all through the blocks' backward."""
    d, w = model.n_embd, mlp_width(model)
    down = tokens * (4 * d + (a * d if low else 0) + a * w) + a * d * w
    product = tokens * (4 * d + 2 * a * w)
    parked = 4 * vocab_size * d if model.tie_embeddings else 0
    return max(down, product) + parked
