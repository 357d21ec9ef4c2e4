"""Every registered architecture, one file each (pipeline/model/architectures/): it builds, its
Architecture's formulas match the built model (parameters, FLOPs against torch's FlopCounterMode,
memory against MemTracker, with tests/test_compute.py's helpers), and nothing outside its file
knows its name. A new architecture is tested here without a line of test code. The rotary decoder
family's flags that no shipped member sets (biases, a plain MLP) are tested on members that set them.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch
from transformers import ArceeConfig, ArceeForCausalLM, LlamaConfig, LlamaForCausalLM
from torch.utils.flop_counter import FlopCounterMode

from pipeline.core import params as params_module
from pipeline.core.errors import PipelineError
from pipeline.engine.step import bf16_native, hidden_matrices, optimizer_for
from pipeline.core.params import ARCHITECTURES_DIR, architecture_names
from pipeline.model import compute
from pipeline.model.build import count_parameters
from pipeline.model.registry import ARCHITECTURES, lookup
from pipeline.model.rotary import RotaryDecoder, rotary_decoder
from pipeline.registry import code_deps
from test_compute import MEMORY_TOLERANCE, built, counted_flops_per_token, shape, tracked_peak

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"
CPU = torch.device("cpu")
NAMES = sorted(ARCHITECTURES)
VOCAB = 512


def tiny(name: str, **more) -> params_module.Model:
    return shape(n_layer=2, n_embd=64, n_head=4, context=64, architecture=name, **more)


def test_the_directory_and_the_registry_agree():
    """params checks names against the directory (it must not import the registry)."""
    assert architecture_names() == tuple(NAMES)
    for name in NAMES:
        assert importlib.import_module(f"pipeline.model.architectures.{name}").SPEC is ARCHITECTURES[name]


def test_an_unknown_architecture_names_the_key_the_choices_and_the_closest():
    with pytest.raises(PipelineError) as info:
        lookup(NAMES[0] + "x")
    message = str(info.value)
    assert message.startswith("model.architecture: ") and f"did you mean {NAMES[0]!r}" in message
    assert all(name in message for name in NAMES)


def test_tokenize_imports_no_architecture_and_estimate_every_one():
    """A model edit must not re-tokenize, and must re-estimate (pipeline.registry.code_deps)."""
    architecture_files = {f"pipeline/model/architectures/{name}.py" for name in NAMES}
    assert not {dep for dep in code_deps("pipeline.stages.tokenize") if dep.startswith("pipeline/model/")} \
        - {"pipeline/model/__init__.py"}
    assert architecture_files <= set(code_deps("pipeline.stages.estimate"))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("name", NAMES)
def test_parameters_match_the_built_model(name, tied):
    model = tiny(name, tie_embeddings=tied)
    net = built(model, VOCAB)
    assert compute.parameter_count(model, VOCAB) == count_parameters(net)
    assert compute.vector_parameters(model) == sum(p.numel() for p in net.parameters() if p.dim() == 1)
    assert sorted(compute.hidden_matrix_shapes(model)) == sorted(tuple(p.shape) for p in hidden_matrices(net))


@pytest.mark.parametrize("name", NAMES)
def test_flops_match_flop_counter(name):
    model = tiny(name)
    counted, net = counted_flops_per_token(model, VOCAB)
    # the counter sees matmuls only; 6N also counts biases and norm gains
    assert compute.flops_per_token(model, VOCAB) - 6 * compute.vector_parameters(model) == counted
    train = params_module.load([ROOT / "params.yaml"], ["train.optimizer=muon"]).train
    with FlopCounterMode(display=False) as counter:
        optimizer_for(net, train).step()   # the gradients of the counted backward
    assert compute.optimizer_flops_per_step(model, VOCAB, "muon") == counter.get_total_flops() > 0


@pytest.mark.parametrize("precision,checkpointing,optimizer", [("fp32", False, "adamw"), ("fp16", True, "muon")])
@pytest.mark.parametrize("name", NAMES)
def test_training_memory_matches_mem_tracker(name, precision, checkpointing, optimizer):
    model = tiny(name)
    measured = tracked_peak(built(model, VOCAB), model, VOCAB, 4, precision, checkpointing, optimizer)
    estimate = compute.training_memory(model, VOCAB, 4, precision, checkpointing, optimizer=optimizer, device_kind="cpu",
                                       newton_schulz=compute.newton_schulz_precision("cpu", bf16_native(CPU)))
    assert estimate.total == pytest.approx(measured, rel=MEMORY_TOLERANCE)


def _string_constants(tree: ast.Module) -> list[ast.Constant]:
    """String constants that are not docstrings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)}
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_architecture_specific_code_is_only_in_its_file():
    """No module outside pipeline/model/architectures/ names an architecture in its code (comments
    and docstrings may): the generic code asks the Architecture instead of branching on its name."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == ARCHITECTURES_DIR:
            continue
        for node in _string_constants(ast.parse(path.read_text(encoding="utf-8"))):
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}" for name in NAMES
                      if name in node.value.lower()]
    assert not found, "\n".join(found)


# members of the rotary decoder family with the flags no shipped member sets, on the Transformers
# classes that have them: biases on every projection (Llama's attention_bias and mlp_bias), and a
# plain MLP (Arcee's act(x Wu) Wd, relu2)
FLAGGED = {"biases": RotaryDecoder("llama", LlamaForCausalLM, LlamaConfig, attention_bias=True, mlp_bias=True),
           "not-gated": RotaryDecoder("llama", ArceeForCausalLM, ArceeConfig, gated=False, activation="relu2")}


@pytest.mark.parametrize("flags", FLAGGED)
def test_the_rotary_flags_no_member_sets_match_the_built_model(monkeypatch, flags):
    """Their parameters, FLOPs and memory, as every registered architecture's, under the name llama."""
    plain = compute.hidden_matrix_shapes(tiny("llama")), compute.vector_parameters(tiny("llama"))
    monkeypatch.setitem(ARCHITECTURES, "llama", rotary_decoder(FLAGGED[flags]))
    model = tiny("llama")
    if flags == "biases":
        d, width = model.n_embd, 192   # the default MLP width at 64
        assert compute.vector_parameters(model) - plain[1] == model.n_layer * (4 * d + 2 * width + d)
    else:
        assert len(compute.hidden_matrix_shapes(model)) == len(plain[0]) - model.n_layer   # no gate_proj
    test_parameters_match_the_built_model("llama", True)
    test_flops_match_flop_counter("llama")
    for precision, checkpointing, optimizer in [("fp32", False, "adamw"), ("fp16", False, "adamw"),
                                                ("fp16", True, "muon")]:
        test_training_memory_matches_mem_tracker("llama", precision, checkpointing, optimizer)
