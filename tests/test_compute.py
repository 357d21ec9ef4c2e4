"""FLOPs and memory models against PyTorch's own accounting, on small real models of both
architectures (gpt2, qwen3) and both optimizers (adamw, muon).

FLOPs: torch.utils.flop_counter.FlopCounterMode over a real forward + backward (eager attention:
the counter has no formula for CPU's fused SDPA kernel and would count attention as zero), and
over Muon's optimizer step (its Newton-Schulz matmuls).
Memory: torch.distributed._tools.mem_tracker.MemTracker over the train stage's micro-step (autocast,
held logits, F.cross_entropy, two accumulated micro-batches, the optimizer update), on CPU: it
tracks every tensor storage with the CUDA allocator's 512-byte rounding. CPU autocast keeps pow and
softmax in fp16 where CUDA upcasts them, so the model is checked with device_kind="cpu".
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode

from pathlib import Path

from pipeline.model import compute
from pipeline.core import params as params_module
from pipeline.engine.step import TrainStep, bf16_native, hidden_matrices, optimizer_for
from pipeline.model.build import build_model, count_parameters, model_config
from pipeline.model.registry import architecture_of

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")

FLOP_TOLERANCE = 0.0025   # nanoGPT's 6N + attention is within 0.25% of the counter for GPT-2 small
MEMORY_TOLERANCE = 0.03   # measured: within 1.6% over 56 configurations (2-3 layers, 64-128 wide)


def shape(n_layer=2, n_embd=64, n_head=4, context=64, architecture="gpt2", **more):
    return params_module.Model(architecture=architecture, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                               context=context, dropout=0.0, **more)


def qwen3(n_layer=2, n_embd=64, n_head=4, context=64, **more):
    return shape(n_layer, n_embd, n_head, context, architecture="qwen3", **more)


def built(model, vocab, attention="sdpa", activation=None):
    """The train stage's model; eager attention or another activation only where a test asks."""
    torch.manual_seed(0)
    if attention == "sdpa" and activation is None:
        return build_model(model, vocab, eos_token_id=0)
    config = model_config(model, vocab, eos_token_id=0)
    config._attn_implementation = attention
    if activation:
        config.activation_function = activation
    return architecture_of(model).model_class(config)


MODELS = [(shape(), 512), (shape(3, 96, 6, 128), 1000), (shape(tie_embeddings=False, mlp_width=96), 300),
          (qwen3(), 512), (qwen3(3, 96, 6, 128), 1000), (qwen3(tie_embeddings=False, mlp_activation="relu2"), 300)]
IDS = ["gpt2", "gpt2-3x96", "gpt2-untied", "qwen3", "qwen3-3x96", "qwen3-untied-relu2"]


@pytest.mark.parametrize("model,vocab", MODELS, ids=IDS)
def test_parameter_count_matches_the_built_model(model, vocab):
    net = built(model, vocab)
    assert compute.parameter_count(model, vocab) == count_parameters(net)
    assert compute.hidden_matrix_parameters(model) == sum(p.numel() for p in hidden_matrices(net))


def test_gpt2_small_figures():
    small = shape(12, 768, 12, 1024)
    assert compute.parameter_count(small, 50257) == 124_439_808  # GPT-2 small as published
    counter_formula = 72 * 12 * 768**2 + 6 * 50257 * 768 + 12 * 12 * 1024 * 768  # what FlopCounterMode counts
    assert compute.flops_per_token(small, 50257) == pytest.approx(counter_formula, rel=FLOP_TOLERANCE)


def counted_flops_per_token(model, vocab, batch=2):
    net = built(model, vocab, attention="eager")
    ids = torch.randint(0, vocab, (batch, model.context))
    with FlopCounterMode(display=False) as counter:
        logits = net(input_ids=ids).logits
        F.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    return counter.get_total_flops() / (batch * model.context), net


@pytest.mark.parametrize("model,vocab", MODELS[:2] + MODELS[3:5] + [MODELS[5]], ids=IDS[:2] + IDS[3:])
def test_flops_per_token_matches_flop_counter(model, vocab):
    counted, _ = counted_flops_per_token(model, vocab)
    # the counter sees matmuls only; 6N also counts the biases and norm gains (gpt2: 13d per block
    # + ln_f; qwen3: 2d + 2 head_dim per block + the final norm), a few per cent at width 64 and
    # 0.2% for GPT-2 small; an untied token embedding is a lookup, its lm_head a matmul
    assert compute.flops_per_token(model, vocab) - 6 * compute.vector_parameters(model) == counted


@pytest.mark.parametrize("architecture", ["gpt2", "qwen3"])
def test_flops_per_token_within_one_percent_at_the_demo_width(architecture):
    demo = params_module.load([ROOT / "params.yaml", ROOT / "params" / "demo.yaml"],
                              [f"model.architecture={architecture}", "model.context=64"]).model
    counted, _ = counted_flops_per_token(demo, 4096, batch=1)
    assert compute.flops_per_token(demo, 4096) == pytest.approx(counted, rel=0.01)


@pytest.mark.parametrize("model,vocab", [MODELS[0], MODELS[2], MODELS[3], MODELS[5]],
                         ids=["gpt2", "gpt2-untied", "qwen3", "qwen3-untied-relu2"])
def test_optimizer_flops_match_flop_counter(model, vocab):
    _, net = counted_flops_per_token(model, vocab)   # leaves every gradient in place
    for optimizer in ("adamw", "muon"):
        train = params_module.load([ROOT / "params.yaml"], [f"train.optimizer={optimizer}"]).train
        step = optimizer_for(net, train)
        with FlopCounterMode(display=False) as counter:
            step.step()
        assert compute.optimizer_flops_per_step(model, vocab, optimizer) == counter.get_total_flops()
    assert counter.get_total_flops() > 0  # Muon's Newton-Schulz matmuls


def tracked_peak(net, model, vocab, micro_batch, precision, checkpointing, optimizer="adamw"):
    """Peak bytes MemTracker sees over the train stage's own step (pipeline/engine/step.py), two
    micro-batches of accumulation and the optimizer update."""
    net.train()
    if checkpointing:
        net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    train = params_module.load([ROOT / "params.yaml"], [f"train.optimizer={optimizer}"]).train
    step = TrainStep(net, optimizer_for(net, train), precision=precision, device="cpu", grad_clip=train.grad_clip)
    ids = torch.randint(0, vocab, (micro_batch, model.context))

    step.micro(ids, ids, accum=2)
    step.update()  # optimizer states exist from here on, as in every step but the first
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


@pytest.mark.parametrize("precision,checkpointing,attention,activation,model,vocab,micro,optimizer", [
    ("fp32", False, "sdpa", None, shape(), 512, 4, "adamw"),
    ("fp16", False, "sdpa", None, shape(3, 64, 4, 64), 512, 4, "adamw"),
    ("fp32", True, "sdpa", None, shape(2, 64, 4, 128), 512, 4, "adamw"),
    ("fp16", True, "sdpa", None, shape(2, 128, 4, 64), 512, 4, "adamw"),
    ("fp16", False, "eager", "gelu_new", shape(2, 64, 8, 64), 1024, 4, "adamw"),
    ("fp32", True, "eager", "gelu_new", shape(2, 64, 4, 64), 512, 8, "adamw"),
    ("bf16", False, "sdpa", None, shape(2, 64, 4, 64, tie_embeddings=False, mlp_activation="relu2"), 512, 4, "muon"),
    ("fp32", True, "sdpa", None, shape(2, 64, 4, 64), 512, 4, "muon"),
    ("fp32", False, "sdpa", None, qwen3(), 512, 4, "adamw"),
    ("bf16", False, "sdpa", None, qwen3(3, 64, 2, 128), 512, 4, "adamw"),
    ("fp16", False, "sdpa", None, qwen3(2, 128, 4, 64, tie_embeddings=False, mlp_activation="relu2"), 512, 4, "muon"),
    ("fp32", True, "sdpa", None, qwen3(2, 128, 4, 64), 512, 4, "adamw"),
    ("bf16", True, "sdpa", None, qwen3(2, 96, 3, 64, mlp_width=384), 512, 4, "muon"),
    ("fp32", True, "sdpa", None, qwen3(3, 64, 2, 128), 512, 4, "muon"),
], ids=lambda v: f"{v.architecture}-{v.n_layer}x{v.n_embd}" if isinstance(v, params_module.Model) else None)
def test_training_memory_matches_mem_tracker(precision, checkpointing, attention, activation, model, vocab, micro,
                                             optimizer):
    net = built(model, vocab, attention, activation)
    measured = tracked_peak(net, model, vocab, micro, precision, checkpointing, optimizer)
    estimate = compute.training_memory(model, vocab, micro, precision, checkpointing, optimizer=optimizer,
                                       device_kind="cpu", attention=attention,
                                       activation=activation or compute.activation_of(model),
                                       newton_schulz=compute.newton_schulz_precision("cpu", bf16_native(CPU)))
    assert estimate.runtime == 0
    assert estimate.total == pytest.approx(measured, rel=MEMORY_TOLERANCE)


@pytest.mark.parametrize("newton_schulz", ["bf16", "fp32"])
@pytest.mark.parametrize("model", [shape(1, 128, 2, 8), qwen3(1, 128, 2, 8, mlp_width=1024)], ids=["gpt2", "qwen3"])
def test_the_newton_schulz_workspace_where_it_sets_the_peak(model, newton_schulz, monkeypatch):
    """One token-light step of a wide layer: the update, not the forward/backward, peaks; with the
    iterations in bf16 (a CPU with AVX512-bf16 or AMX) and in fp32 (one without)."""
    monkeypatch.setattr("pipeline.engine.step.bf16_native", lambda device: newton_schulz == "bf16")
    vocab, micro = 64, 1
    measured = tracked_peak(built(model, vocab), model, vocab, micro, "fp32", False, "muon")
    estimate = compute.training_memory(model, vocab, micro, "fp32", False, optimizer="muon", device_kind="cpu",
                                       newton_schulz=newton_schulz)
    assert estimate.optimizer_step > MEMORY_TOLERANCE * measured  # without it the estimate would fail
    assert estimate.total == pytest.approx(measured, rel=MEMORY_TOLERANCE / 3)


def test_memory_parts_respond_to_the_plan():
    small = shape(12, 768, 12, 1024)

    def memory(micro=8, precision="fp16", checkpointing=False, **kw):
        kw.setdefault("activation", "gelu_pytorch_tanh")
        return compute.training_memory(small, 32000, micro, precision, checkpointing, **kw)

    plain = memory()
    n = compute.parameter_count(small, 32000)
    assert plain.weights == plain.gradients == plain.optimizer // 2 == 4 * n
    muon = memory(optimizer="muon")   # one momentum buffer per hidden matrix, AdamW's two for the rest
    hidden = compute.hidden_matrix_parameters(small)
    assert muon.optimizer == 4 * hidden + 8 * (n - hidden) and 0.7 < hidden / n < 0.8  # 85M of 110M
    assert muon.optimizer_step == 0 < compute.newton_schulz_workspace(small)  # activations dwarf it here
    assert muon.total == plain.total - 4 * hidden
    modern = compute.training_memory(shape(12, 768, 12, 1024, architecture="qwen3"), 32000, 8, "fp16", False)
    assert modern.activations > plain.activations  # RMSNorm and QK-norm in python save more than LayerNorm
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
