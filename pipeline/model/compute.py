"""FLOPs and memory of training a model configuration, from its params alone.

    flops_per_token(params.model, vocab_size)       # training FLOPs per token (forward + backward)
    parameter_count(params.model, vocab_size)       # as count_parameters() of the built model
    training_memory(params.model, vocab_size, micro_batch, "fp16", False, optimizer=params.train.optimizer)
    optimizer_flops_per_step(params.model, vocab_size, params.train.optimizer)   # Muon's Newton-Schulz

The formulas here hold for every architecture; what differs between them (their matrices, biases and
norms, each block's saved tensors) comes from model.architecture's pipeline.model.spec.Architecture.
Where the optimizer matters they follow train.optimizer (adamw | muon, see pipeline/engine/step.py).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from pipeline.core.params import Model
from pipeline.model.build import activation_of, mlp_width
from pipeline.model.registry import architecture_of
from pipeline.model.spec import MicroStep

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
    return architecture_of(model).block_matrices(model, mlp_width(model)) * model.n_layer


def vector_parameters(model: Model) -> int:
    """Biases and norm gains, all layers and the final norm: parameters that are no matmul."""
    spec = architecture_of(model)
    return model.n_layer * spec.block_vectors(model, mlp_width(model)) + spec.final_norm_parameters(model.n_embd)


def parameter_count(model: Model, vocab_size: int, *, position_embeddings: bool = True) -> int:
    """Parameters of the built model (pipeline.model.build.count_parameters), the lm_head counted
    once when tied to the token embedding."""
    d = model.n_embd
    total = sum(r * c for r, c in hidden_matrix_shapes(model)) + vector_parameters(model)
    total += vocab_size * d * (2 if _untied(model) else 1)
    if architecture_of(model).learned_positions and position_embeddings:
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
# each architecture and optimizer. What one block saves is its architecture's (Architecture.block_memory).


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


# Besides the weights and the optimizer's state: config, meta, history, scheduler and scaler
# states and SHA256SUMS, well under this.
CHECKPOINT_SMALL_FILES_BYTES = 1 << 20


def checkpoint_parts(model: Model, vocab_size: int, optimizer: str) -> dict[str, int]:
    """Bytes of one checkpoint's weights (fp32) and optimizer state, as the memory model counts
    them (training_memory): AdamW keeps two fp32 moments per parameter, Muon one momentum per
    hidden matrix and AdamW's two for the rest."""
    return {"weights": 4 * parameter_count(model, vocab_size),
            "optimizer": optimizer_state_bytes(model, vocab_size, optimizer)}


def checkpoint_bytes(model: Model, vocab_size: int, optimizer: str) -> int:
    """One checkpoint on disk: what doctor checks the free space against, what a reclaim uploads."""
    return sum(checkpoint_parts(model, vocab_size, optimizer).values()) + CHECKPOINT_SMALL_FILES_BYTES


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
    block = architecture_of(model).block_memory(MicroStep(
        model=model, mlp_width=mlp_width(model), vocab_size=vocab_size, tokens=tokens, activation=activation,
        attention=attention, autocast=low, value_bytes=a, device_kind=device_kind))
    # pipeline/engine/step.py keeps only the loss: the logits live until the fp32 log-softmax is made from
    # them, then only what autograd saved (the log-softmax) and the loss gradients exist
    logits = tokens * (a * vocab_size + 4 * vocab_size)
    loss_backward = tokens * 12 * vocab_size  # fp32 log-softmax, nll_loss grad, log-softmax grad
    head_casts = vocab_size * d if low else 0

    if checkpointing:
        # one block input each; backward meets the loss first, then recomputes one block at a time,
        # and autocast's weight cache is gone by then (it is cleared when the autocast region exits)
        saved = layers * 4 * d + block.head
        recompute = tokens * block.saved + block.backward - block.recompute_overlap
        peak = max(logits, loss_backward, recompute)
        casts = head_casts + (block.layer_casts if recompute > loss_backward else 0)
    else:
        saved = layers * block.saved + block.head
        peak = max(logits, loss_backward, block.backward)
        casts = head_casts + layers * block.layer_casts
    autocast_cache, activations, loss = 2 * casts, tokens * saved, peak
    # the update runs after backward freed the activations: only what it needs beyond them counts
    step = newton_schulz_workspace(model, newton_schulz) if optimizer == "muon" else 0
    return Memory(weights=4 * n, gradients=4 * n, optimizer=optimizer_state_bytes(model, vocab_size, optimizer),
                  autocast_cache=autocast_cache, activations=activations, loss=loss,
                  optimizer_step=max(0, step - (autocast_cache + activations + loss)), runtime=runtime_bytes)
