"""The training step (pipeline/engine/step.py): the golden loss curve, fp16 overflow skips, accumulation, the Muon +
AdamW optimizer, and every architecture x optimizer through the train stage: learning, exact resume, a model
that loads offline and generates."""
from __future__ import annotations

import copy
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.engine import step
from pipeline.model.build import build_model
from pipeline.registry import run_stage
from trainkit import final_weights, max_difference, tiny_params, train_losses

GOLDEN = Path(__file__).parent / "golden" / "tiny-losses.json"
# Float sums may round differently on another CPU's kernels (AVX2, AVX-512, AMX): a few 1e-5 after 20
# steps. A change to the model, the data order, the optimizer or the step moves them by far more.
GOLDEN_TOLERANCE = 2e-3


def test_the_first_20_losses_of_the_tiny_config_match_the_committed_curve(demo_tokens, tmp_path):
    """As torchtitan keeps one: any numerical change shows up here, and in review as a diff of
    tests/golden/tiny-losses.json (rewrite it with BUDGETGPT_UPDATE_GOLDEN=1 when a change is meant)."""
    run_stage("train", tiny_params(demo_tokens, tmp_path, "train.max_steps=20"))
    losses = train_losses(tmp_path)
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    if os.environ.get("BUDGETGPT_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"config": "tests/trainkit.py TINY, fp32, demo corpus", "losses": losses},
                                     indent=1) + "\n")
    assert losses == pytest.approx(json.loads(GOLDEN.read_text())["losses"], abs=GOLDEN_TOLERANCE)


def _tiny_model(architecture="gpt2", optimizer="adamw"):
    from pipeline.core import params as params_module

    torch.manual_seed(0)
    model = params_module.Model(architecture=architecture, n_layer=1, n_embd=16, n_head=2, context=8, dropout=0.0)
    train = params_module.load([Path(__file__).parents[1] / "params.yaml"], [f"train.optimizer={optimizer}"]).train
    return build_model(model, 32, 0), train


COMBOS = [("gpt2", "adamw"), ("gpt2", "muon"), ("qwen3", "adamw"), ("qwen3", "muon")]


@pytest.mark.parametrize("architecture,optimizer", COMBOS)
def test_an_fp16_overflow_skips_the_update_and_says_so(architecture, optimizer):
    net, train = _tiny_model(architecture, optimizer)
    runner = step.TrainStep(net, step.optimizer_for(net, train), precision="fp16", device="cpu", grad_clip=1.0)
    x = torch.randint(0, 32, (2, 8))
    runner.micro(x, x, accum=1)
    assert runner.update().applied  # optimizer state exists: a skip must leave it alone too
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = copy.deepcopy(runner.optimizer.state_dict())
    runner.micro(x, x, accum=1)
    step.hidden_matrices(net)[-1].grad.fill_(math.inf)  # what an fp16 overflow leaves in one Muon matrix
    update = runner.update()
    assert not update.applied and runner.ran_precision == "fp16"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # no parameter moved, AdamW's neither
    assert _same(state, runner.optimizer.state_dict())
    runner.micro(x, x, accum=1)
    assert runner.update().applied


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("architecture,optimizer", COMBOS)
def test_two_micro_batches_of_one_equal_one_of_two(architecture, optimizer):
    results = []
    for accum in (1, 2):
        net, train = _tiny_model(architecture, optimizer)
        runner = step.TrainStep(net, step.optimizer_for(net, train), precision="fp32", device="cpu", grad_clip=0.0)
        x = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(1))
        for part in torch.chunk(x, accum):
            runner.micro(part, part, accum=accum)
        runner.update()
        results.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    # Muon orthogonalizes in bf16: gradients equal to float rounding may round to other bf16 values
    assert torch.allclose(results[0], results[1], atol=1e-6 if optimizer == "adamw" else 2e-4)


@pytest.mark.parametrize("architecture", ["gpt2", "qwen3"])
def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(architecture):
    net, train = _tiny_model(architecture, "muon")
    opt = step.optimizer_for(net, train)
    assert isinstance(opt, step.MuonAdamW) and isinstance(opt, torch.optim.Optimizer)
    muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    adamw = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    assert muon | adamw == {id(p) for p in net.parameters()} and not muon & adamw
    embeddings = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.Embedding)}
    assert embeddings <= adamw and id(net.get_output_embeddings().weight) in adamw
    assert {id(p) for p in net.parameters() if p.dim() == 1} <= adamw
    assert muon == {id(p) for p in step.hidden_matrices(net)}
    per_block = {"gpt2": 4, "qwen3": 7}[architecture]  # c_attn, c_proj, c_fc, c_proj | q, k, v, o, gate, up, down
    assert len(muon) == per_block * net.config.num_hidden_layers
    assert opt.param_groups[0]["lr"] == train.lr  # AdamW's group first: the train log's lr is train.lr's
    assert all(g["nesterov"] and g["momentum"] == train.muon_momentum for g in opt.muon.param_groups)


def test_muon_scales_gpt2_conv1d_matrices_by_their_true_orientation():
    """torch.optim.Muon scales by sqrt(max(1, rows / cols)) of the stored shape; Conv1D stores (in,
    out), so each group's lr carries the (out, in) ratio: c_fc (out 4d) gets 2x, its c_proj 1x."""
    net, train = _tiny_model("gpt2", "muon")
    opt = step.optimizer_for(net, train)
    lr_of = {id(p): g["lr"] for g in opt.muon.param_groups for p in g["params"]}
    block = net.transformer.h[0]

    def effective(p):  # what torch.optim.Muon's "original" adjust_lr makes of the group lr
        return lr_of[id(p)] * math.sqrt(max(1, p.shape[0] / p.shape[1]))

    assert effective(block.mlp.c_fc.weight) == pytest.approx(2 * train.muon_lr)
    assert effective(block.mlp.c_proj.weight) == pytest.approx(train.muon_lr)
    assert effective(block.attn.c_attn.weight) == pytest.approx(math.sqrt(3) * train.muon_lr)
    assert all(g["lr"] * g["weight_decay"] == pytest.approx(train.muon_lr * train.muon_weight_decay)
               for g in opt.muon.param_groups)
    qwen3, _ = _tiny_model("qwen3", "muon")
    assert [g["lr"] for g in step.optimizer_for(qwen3, train).muon.param_groups] == [train.muon_lr]


def test_the_cosine_schedule_scales_both_optimizers_alike():
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    net, train = _tiny_model("qwen3", "muon")
    opt = step.optimizer_for(net, train)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(opt, 2, 10, min_lr=train.min_lr)
    peaks = [g["initial_lr"] for g in opt.param_groups]  # the scheduler set lr to its step-0 value, 0
    seen = []
    for _ in range(10):
        seen.append([g["lr"] / peak for g, peak in zip(opt.param_groups, peaks)])
        opt.step()
        scheduler.step()
    assert all(row == pytest.approx([row[0]] * len(row)) for row in seen)  # one factor for every group
    assert seen[0][0] == 0 and seen[2][0] == 1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([p * train.min_lr / train.lr for p in peaks])


@pytest.mark.parametrize("architecture", ["gpt2", "qwen3"])
def test_a_restored_muon_state_continues_bitwise(architecture):
    """As the train stage resumes: optimizer state, then the LR schedule's, then more steps."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    def schedule(opt):
        return get_cosine_with_min_lr_schedule_with_warmup(opt, 2, 8, min_lr=train.min_lr)

    def steps(net, opt, scheduler, n, seed):
        gen = torch.Generator().manual_seed(seed)
        runner = step.TrainStep(net, opt, precision="fp32", device="cpu", grad_clip=1.0)
        for _ in range(n):
            x = torch.randint(0, 32, (2, 8), generator=gen)
            runner.micro(x, x, accum=1)
            runner.update()
            scheduler.step()

    net, train = _tiny_model(architecture, "muon")
    opt = step.optimizer_for(net, train)
    scheduler = schedule(opt)
    steps(net, opt, scheduler, 3, 0)
    saved, saved_schedule = copy.deepcopy(opt.state_dict()), copy.deepcopy(scheduler.state_dict())
    weights = copy.deepcopy(net.state_dict())
    assert len(saved["muon"]["state"]) == len(step.hidden_matrices(net))
    assert all(set(s) == {"momentum_buffer"} for s in saved["muon"]["state"].values())
    steps(net, opt, scheduler, 4, 1)

    again, _ = _tiny_model(architecture, "muon")
    again.load_state_dict(weights)
    restored = step.optimizer_for(again, train)
    restored_schedule = schedule(restored)
    restored.load_state_dict(saved)
    restored_schedule.load_state_dict(saved_schedule)
    steps(again, restored, restored_schedule, 4, 1)
    assert [g["lr"] for g in restored.muon.param_groups] == [g["lr"] for g in opt.muon.param_groups]
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="train.optimizer changed"):
        restored.load_state_dict(step.optimizer_for(again, train.model_copy(update={"optimizer": "adamw"})).state_dict())


def _stop_after(monkeypatch, at_step: int) -> None:
    """SIGTERM's own path (Trainer._interrupted: checkpoint, then stop) right after step `at_step`."""
    from pipeline.engine import trainer as train

    real = train.Trainer.train_step

    def train_step(self):
        real(self)
        if self.progress.step == at_step:  # as if every process had reported it in this step's all-reduce
            self.caught["signum"] = signal.SIGTERM
            self.signalled = True

    monkeypatch.setattr(train.Trainer, "train_step", train_step)


@pytest.mark.parametrize("architecture,optimizer,tied", [(a, o, not (a == "qwen3" and o == "muon")) for a, o in COMBOS])
def test_each_recipe_trains_resumes_exactly_and_ships_a_model_that_generates(demo_tokens, tmp_path, monkeypatch,
                                                                             architecture, optimizer, tied):
    from pipeline.engine import trainer as train
    from pipeline.evaluation.loading import load_model

    run = ("train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=4", f"train.optimizer={optimizer}",
           f"model.architecture={architecture}", f"model.tie_embeddings={str(tied).lower()}", "train.muon_lr=0.05")
    reference = tmp_path / "reference"
    done = run_stage("train", tiny_params(demo_tokens, reference, *run)).as_dict()
    losses = train_losses(reference)
    assert losses[-1] < losses[0] - 0.5  # it learns

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        _stop_after(patch, 5)
        with pytest.raises(train.TrainingInterrupted):
            run_stage("train", tiny_params(demo_tokens, resumed, *run))
    again = run_stage("train", tiny_params(demo_tokens, resumed, *run)).as_dict()
    assert again["resumed_from"] == "step-000005" and again["steps"] == done["steps"] == 8
    assert max_difference(final_weights(resumed), final_weights(reference)) == 0  # bitwise
    assert train_losses(resumed) == losses

    net = load_model(resumed / "model", torch.device("cpu"))  # the evaluate stage's loader: offline, nothing missing
    assert net.config.model_type == architecture
    assert (net.lm_head.weight.data_ptr() == net.get_input_embeddings().weight.data_ptr()) == tied
    prompt = torch.tensor([[demo_tokens.manifest["eot_token_id"], 5, 6]])
    out = net.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                       pad_token_id=0, eos_token_id=None)
    assert out.shape == (1, 9)


def test_the_optimizer_is_part_of_a_runs_identity(demo_tokens, tmp_path):
    """An AdamW checkpoint never resumes a Muon run (their states differ), nor Muon one with another
    muon_lr; Muon's keys do not split AdamW runs."""
    def train(*sets):
        return run_stage("train", tiny_params(demo_tokens, tmp_path, "train.max_steps=2", "train.checkpoint_every=2",
                                              *sets)).as_dict()

    train()
    assert train("train.muon_lr=0.03", "train.max_steps=3")["resumed_from"] == "step-000002"  # adamw ignores it
    muon = train("train.optimizer=muon", "train.max_steps=3")
    assert muon["resumed_from"] is None
    why = (tmp_path / "checkpoints" / "previous-runs" / "run-1" / "WHY.txt").read_text()
    assert "train.optimizer was 'adamw', now 'muon'" in why
    assert train("train.optimizer=muon", "train.muon_lr=0.03", "train.max_steps=3")["resumed_from"] is None
    assert train("train.optimizer=muon", "train.muon_lr=0.03", "train.max_steps=4")["resumed_from"] == "step-000003"


def test_ddp_with_muon_matches_one_process_with_twice_the_accumulation(demo_tokens, tmp_path):
    """As tests/test_distributed.py for AdamW: DDP averages the gradients before the step, so every
    rank orthogonalizes the same matrices (torch.optim.Muon is not sharded: each rank does all)."""
    import sys

    from trainkit import cli, report, run_cli

    run = ("train.micro_batch_size=2", "train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=2",
           "train.optimizer=muon", "model.architecture=qwen3")
    single = tmp_path / "single"
    one = run_stage("train", tiny_params(demo_tokens, single, *run)).as_dict()
    args = cli(demo_tokens, tmp_path / "ddp", *run, "cost.num_devices=2")
    done = run_cli([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "pipeline", *args[3:]])
    assert done.returncode == 0, done.stderr
    two = report(tmp_path / "ddp")
    assert (one["world"], one["grad_accum_steps"], two["world"], two["grad_accum_steps"]) == (1, 4, 2, 2)
    # the gradients agree to float rounding, but Muon's five bf16 Newton-Schulz iterations round
    # such differences apart: judge the gap against how far training moved the weights
    params = tiny_params(demo_tokens, single, *run)
    torch.manual_seed(params.train.seed)
    init = build_model(params.model, demo_tokens.manifest["vocab_size"], demo_tokens.manifest["eot_token_id"])
    init = init.state_dict()
    ddp, ref = final_weights(tmp_path / "ddp"), final_weights(single)

    def distance(a, b):
        return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in ref))

    assert distance(ddp, ref) < 0.01 * distance(ref, init)
    assert train_losses(tmp_path / "ddp") == pytest.approx(train_losses(single), abs=1e-3)


def test_newton_schulz_in_any_dtype_is_torchs_iteration():
    from torch.optim import _muon

    # torch.optim.Muon looks the function up by this name at each step: the override point exists
    assert "_zeropower_via_newtonschulz" in _muon._single_tensor_muon.__code__.co_names
    coefficients = (_muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C)
    torch.manual_seed(0)
    for grad in (torch.randn(48, 96), torch.randn(96, 48)):
        torchs = _muon._zeropower_via_newtonschulz(grad, coefficients, 5, 1e-7)
        for dtype in (torch.bfloat16, torch.float32, torch.float16):
            ours = step.orthogonalize(grad, coefficients, 5, 1e-7, dtype=dtype)
            assert ours.dtype == dtype and ours.shape == grad.shape
            assert (ours.float() - torchs.float()).abs().max() < 0.02  # bf16 keeps 8 bits of mantissa
            # the iteration pushes every singular value into about [0.7, 1.2]
            singular = torch.linalg.svdvals(ours.float())
            assert 0.6 < singular.min() and singular.max() < 1.3
    huge = torch.randn(32, 64) * 1e6  # past fp16's range: normalized before the cast, not inf
    assert torch.isfinite(step.orthogonalize(huge, coefficients, 5, 1e-7, dtype=torch.float16)).all()


@pytest.mark.parametrize("native", [True, False])
def test_muon_iterates_in_what_the_cpu_multiplies_natively(native, monkeypatch):
    """bf16 (torch's own) on a CPU with AVX512-bf16/AMX, fp32 on one without, where emulated bf16
    matmuls are several times slower than fp32; torch's function is back in place after the step."""
    from torch.optim import _muon

    monkeypatch.setattr(step, "bf16_native", lambda device: native)
    net, train = _tiny_model("qwen3", "muon")
    opt = step.optimizer_for(net, train)
    assert opt.newton_schulz == ("bf16" if native else "fp32")
    seen = []
    original = _muon._zeropower_via_newtonschulz
    monkeypatch.setattr(step, "orthogonalize", lambda *a, dtype: seen.append(dtype) or original(*a[:4]))
    x = torch.randint(0, 32, (2, 8))
    runner = step.TrainStep(net, opt, precision="fp32", device="cpu", grad_clip=1.0)
    runner.micro(x, x, accum=1)
    assert runner.update().applied
    assert seen == ([] if native else [torch.float32] * len(step.hidden_matrices(net)))
    assert _muon._zeropower_via_newtonschulz is original


def test_a_compiled_model_steps_as_the_plain_one():
    """train.compile hands TrainStep the torch.compile wrapper, which has no len(): the step must
    not test it for truth. (backend="eager": dynamo's graph capture without inductor's codegen.)"""
    net, train = _tiny_model()
    twin = copy.deepcopy(net)
    x = torch.randint(0, 32, (2, 8))
    plain = step.TrainStep(net, step.optimizer_for(net, train), precision="fp32", device="cpu", grad_clip=1.0)
    compiled = step.TrainStep(twin, step.optimizer_for(twin, train), precision="fp32", device="cpu", grad_clip=1.0)
    wrapper = torch.compile(twin, backend="eager")
    for _ in range(2):
        expected = plain.micro(x, x, accum=1)
        assert torch.allclose(compiled.micro(x, x, accum=1, model=wrapper), expected, atol=1e-6)
        plain.update(), compiled.update()
    assert max_difference(net.state_dict(), twin.state_dict()) < 1e-6


def test_the_fp16_newton_schulz_patch_is_what_torchs_muon_step_calls(monkeypatch):
    """A T4's Muon runs the iteration in fp16 through the patch over torch's private
    _zeropower_via_newtonschulz: if torch renames it or stops calling it from its step, the patch
    would silently not run (and torch's bf16 one, emulated on a T4, would); this fails instead."""
    from torch.optim import _muon

    assert callable(getattr(_muon, "_zeropower_via_newtonschulz", None)), "torch renamed the Newton-Schulz function"
    net, train = _tiny_model("qwen3", "muon")
    opt = step.optimizer_for(net, train)
    opt.newton_schulz = "fp16"  # what newton_schulz_precision gives a GPU without native bf16
    seen = []
    orthogonalize = step.orthogonalize
    monkeypatch.setattr(step, "orthogonalize", lambda *a, dtype: seen.append(dtype) or orthogonalize(*a, dtype=dtype))
    runner = step.TrainStep(net, opt, precision="fp32", device="cpu", grad_clip=1.0)
    x = torch.randint(0, 32, (2, 8))
    runner.micro(x, x, accum=1)
    assert runner.update().applied
    assert seen == [torch.float16] * len(step.hidden_matrices(net))


@pytest.mark.parametrize("scale", [1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4])
def test_fp16_newton_schulz_stays_finite_and_matches_fp32_at_every_gradient_scale(scale):
    """Gradients from 1e-8 (a late, small step; below fp16's smallest normal, 6.1e-5) to 1e4 (an
    fp16 loss scale not yet backed off): normalized in fp32 before the cast, so fp16 sees values of
    order 1 / sqrt(n) whatever the scale. Tolerance 5e-3: fp16 keeps 11 bits of mantissa (2^-11 =
    4.9e-4 relative), five iterations with three matmuls each round a few times that; bf16 keeps 8
    (the 0.02 above)."""
    from torch.optim import _muon

    coefficients = (_muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C)
    torch.manual_seed(0)
    for shape in ((64, 128), (128, 64), (96, 96)):
        grad = torch.randn(shape) * scale
        fp16 = step.orthogonalize(grad, coefficients, 5, 1e-7, dtype=torch.float16)
        fp32 = step.orthogonalize(grad, coefficients, 5, 1e-7, dtype=torch.float32)
        assert torch.isfinite(fp16).all()
        assert (fp16.float() - fp32).abs().max() < 5e-3
        assert fp32.abs().max() > 0.05  # not a trivial match of two zero matrices


@pytest.mark.parametrize("architecture", ["gpt2", "qwen3"])
def test_attention_takes_the_causal_path_with_no_mask_as_the_trainer_runs_it(architecture, monkeypatch):
    """The trainer's forward (loss_of: input_ids only, no attention_mask) must reach
    scaled_dot_product_attention with is_causal=True and attn_mask None: with an explicit mask a
    T4 gets neither flash (sm_80+) nor, in many versions, the memory-efficient kernel, and the math
    kernel's T x T scores break the memory plan."""
    calls = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask", args[3] if len(args) > 3 else None), kwargs.get("is_causal")))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    net, _ = _tiny_model(architecture)
    x = torch.randint(0, 32, (2, 8))
    loss, _ = step.loss_of(net, x, x, "cpu", "fp16")
    loss.backward()
    assert len(calls) == net.config.num_hidden_layers
    assert all(mask is None and causal is True for mask, causal in calls), calls
