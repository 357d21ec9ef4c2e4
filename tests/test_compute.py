"""FLOPs and memory models against PyTorch's own accounting, on small real GPT-2 models.

FLOPs: torch.utils.flop_counter.FlopCounterMode over a real forward + backward (eager attention:
the counter has no formula for CPU's fused SDPA kernel and would count attention as zero).
Memory: torch.distributed._tools.mem_tracker.MemTracker over the train stage's micro-step (autocast,
held logits, F.cross_entropy, two accumulated micro-batches, fused AdamW), on CPU: it tracks every
tensor storage with the CUDA allocator's 512-byte rounding. CPU autocast keeps pow and softmax in
fp16 where CUDA upcasts them, so the model is checked with device_kind="cpu".
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2LMHeadModel

from pathlib import Path

from pipeline import compute, params as params_module
from pipeline.step import TrainStep, optimizer_for
from pipeline.model import build_model, count_parameters, gpt2_config

ROOT = Path(__file__).resolve().parent.parent

FLOP_TOLERANCE = 0.0025   # nanoGPT's 6N + attention is within 0.25% of the counter for GPT-2 small
MEMORY_TOLERANCE = 0.03   # measured: within 1.6% over 56 configurations (2-3 layers, 64-128 wide)


def shape(n_layer=2, n_embd=64, n_head=4, context=64):
    return SimpleNamespace(n_layer=n_layer, n_embd=n_embd, n_head=n_head, context=context, dropout=0.0)


def gpt2(model, vocab, attention="sdpa", activation=None):
    """The train stage's model; eager attention or another activation only where a test asks."""
    torch.manual_seed(0)
    if attention == "sdpa" and activation is None:
        return build_model(model, vocab, eos_token_id=0)
    config = gpt2_config(model, vocab, eos_token_id=0)
    config._attn_implementation = attention
    config.activation_function = activation or config.activation_function
    return GPT2LMHeadModel(config)


def test_parameter_count_matches_the_built_model():
    for model, vocab in [(shape(), 512), (shape(3, 96, 6, 128), 1000)]:
        assert compute.parameter_count(model, vocab) == count_parameters(gpt2(model, vocab))


def test_gpt2_small_figures():
    small = shape(12, 768, 12, 1024)
    assert compute.parameter_count(small, 50257) == 124_439_808  # GPT-2 small as published
    counter_formula = 72 * 12 * 768**2 + 6 * 50257 * 768 + 12 * 12 * 1024 * 768  # what FlopCounterMode counts
    assert compute.flops_per_token(small, 50257) == pytest.approx(counter_formula, rel=FLOP_TOLERANCE)


@pytest.mark.parametrize("model,vocab", [(shape(), 512), (shape(3, 128, 4, 128), 2048), (shape(2, 96, 3, 256), 300)])
def test_flops_per_token_matches_flop_counter(model, vocab):
    net = gpt2(model, vocab, attention="eager")
    batch = 2
    ids = torch.randint(0, vocab, (batch, model.context))
    with FlopCounterMode(display=False) as counter:
        logits = net(input_ids=ids).logits
        F.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    counted = counter.get_total_flops() / (batch * model.context)
    # the counter sees matmuls only; 6N also counts the biases and LayerNorm weights (13d per block
    # + ln_f), a few per cent at width 64 and 0.2% for GPT-2 small
    vectors = model.n_layer * 13 * model.n_embd + 2 * model.n_embd
    assert compute.flops_per_token(model, vocab) - 6 * vectors == counted


def tracked_peak(net, model, vocab, micro_batch, precision, checkpointing):
    """Peak bytes MemTracker sees over the train stage's own step (pipeline/step.py), two
    micro-batches of accumulation and the optimizer update."""
    net.train()
    if checkpointing:
        net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    train = params_module.load([ROOT / "params.yaml"]).train
    step = TrainStep(net, optimizer_for(net, train), precision=precision, device="cpu", grad_clip=train.grad_clip)
    ids = torch.randint(0, vocab, (micro_batch, model.context))

    step.micro(ids, ids, accum=2)
    step.update()  # AdamW states exist from here on, as in every step but the first
    tracker = MemTracker()
    tracker.track_external(net, step.optimizer, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tracker:
            for _ in range(2):  # gradients from the first micro-batch are alive in the second
                step.micro(ids, ids, accum=2)
                tracker.reset_mod_stats()
            step.update()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


@pytest.mark.parametrize("precision,checkpointing,attention,activation,model,vocab,micro", [
    ("fp32", False, "sdpa", None, shape(), 512, 4),
    ("fp16", False, "sdpa", None, shape(3, 64, 4, 64), 512, 4),
    ("fp32", True, "sdpa", None, shape(2, 64, 4, 128), 512, 4),
    ("fp16", True, "sdpa", None, shape(2, 128, 4, 64), 512, 4),
    ("fp16", False, "eager", "gelu_new", shape(2, 64, 8, 64), 1024, 4),
    ("fp32", True, "eager", "gelu_new", shape(2, 64, 4, 64), 512, 8),
])
def test_training_memory_matches_mem_tracker(precision, checkpointing, attention, activation, model, vocab, micro):
    net = gpt2(model, vocab, attention, activation)
    measured = tracked_peak(net, model, vocab, micro, precision, checkpointing)
    estimate = compute.training_memory(model, vocab, micro, precision, checkpointing, device_kind="cpu",
                                       attention=attention, activation=net.config.activation_function)
    assert estimate.runtime == 0
    assert estimate.total == pytest.approx(measured, rel=MEMORY_TOLERANCE)


def test_memory_parts_respond_to_the_plan():
    small = shape(12, 768, 12, 1024)

    def memory(micro=8, precision="fp16", checkpointing=False, **kw):
        kw.setdefault("activation", "gelu_pytorch_tanh")
        return compute.training_memory(small, 32000, micro, precision, checkpointing, **kw)

    plain = memory()
    assert plain.weights == plain.gradients == plain.optimizer // 2 == 4 * compute.parameter_count(small, 32000)
    assert memory(checkpointing=True).activations < plain.activations / 5
    assert memory(micro=16).activations == 2 * plain.activations
    fp32 = memory(precision="fp32")
    assert fp32.autocast_cache == 0 and fp32.activations > plain.activations
    # gelu_new as separate ops saves more; CUDA autocast runs its pow (and what follows) in fp32
    assert memory(activation="gelu_new", device_kind="cpu").activations < memory(activation="gelu_new").activations
    assert plain.activations < memory(activation="gelu_new", device_kind="cpu").activations
    # logits: V*T*B of fp32 log-softmax plus its gradients dominate the loss part
    assert plain.loss >= 12 * 32000 * 1024 * 8
    assert memory(runtime_bytes=123).total == plain.total + 123
    with pytest.raises(ValueError, match="activation_function 'swish'"):
        memory(activation="swish")
