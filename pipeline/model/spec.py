"""What an architecture is to the pipeline: one Architecture object, SPEC, in one file of
pipeline/model/architectures/, registered in pipeline/model/registry.py.

The generic code asks it for everything that differs between architectures and never branches on
a name: pipeline/model/build.py for the Transformers config and class, pipeline/model/compute.py for
the parameter count (hence FLOPs, Muon's matrices, optimizer state) and for each block's share of
training memory; pipeline/model/registry.py runs its params checks where it is looked up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from pipeline.core.params import Model

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

# Activations that are one saved tensor in the memory model: one kernel saves its input h, and the
# next matmul saves its output. relu2 (ReLUSquaredActivation) is two ops, relu then square, but
# square saves relu's output, the tensor relu saves: one tensor too.
FUSED_ACTIVATIONS = frozenset({"gelu", "gelu_pytorch_tanh", "relu", "silu", "relu2"})


class ConfigBuilder(Protocol):
    def __call__(self, model: Model, vocab_size: int, eos_token_id: int, *, activation: str,
                 mlp_width: int) -> PretrainedConfig:
        """The Transformers config of params.model, with the activation and MLP width resolved
        (pipeline.model.build.activation_of, mlp_width)."""


@dataclass(frozen=True)
class MicroStep:
    """One training micro-step as pipeline/engine/step.py runs it: what a block's memory depends on
    beyond the model's shape."""

    model: Model
    mlp_width: int
    vocab_size: int
    tokens: int           # micro-batch size x context
    activation: str       # the MLP's, as Transformers' ACT2FN names it
    attention: str        # sdpa | eager
    autocast: bool        # fp16/bf16 autocast (False: fp32)
    value_bytes: int      # bytes of a value autocast computes in (4 in fp32)
    device_kind: str      # cuda | cpu: autocast keeps different ops in fp32 on each


@dataclass(frozen=True)
class BlockMemory:
    """One transformer block's share of training memory (pipeline.model.compute.training_memory
    adds the parts every architecture has: weights, gradients, optimizer state, logits)."""

    saved: int              # bytes per token one block saves for backward
    head: int               # bytes per token the final norm and the lm_head input save
    layer_casts: int        # values autocast casts per block (its weights and biases); 0 in fp32
    backward: int           # bytes in flight inside one block's backward, beyond its saved tensors
    recompute_overlap: int  # bytes a recomputed block shares with what checkpointing already holds


def no_problems(model: Model) -> list[str]:
    return []


@dataclass(frozen=True)
class Architecture:
    """An architecture: its Transformers model, its parameters and its memory, from params.model."""

    name: str                                   # model.architecture, and the name of its file
    model_class: type[PreTrainedModel]
    config: ConfigBuilder
    own_activation: str                         # what model.mlp_activation: auto means
    default_mlp_width: Callable[[int], int]     # n_embd -> MLP hidden units, when model.mlp_width is null
    # (rows, cols) of one block's 2-D weights as stored: what Muon orthogonalizes
    block_matrices: Callable[[Model, int], list[tuple[int, int]]]   # (model, MLP width)
    block_vectors: Callable[[Model, int], int]  # one block's biases and norm gains, (model, MLP width)
    final_norm_parameters: Callable[[int], int]  # n_embd -> the norm before the lm_head
    learned_positions: bool                     # a context x n_embd position embedding
    block_memory: Callable[[MicroStep], BlockMemory]
    # what this architecture cannot build, one message a problem, each naming its params keys
    params_problems: Callable[[Model], list[str]] = no_problems
