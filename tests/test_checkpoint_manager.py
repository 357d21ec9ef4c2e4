"""pipeline.engine.checkpoint.manager: what the trainer asks of its checkpoints. A save resumes to
the same weights, optimizer and progress; another run's checkpoints are moved aside, never
resumed; after early stopping the best weights are shipped; one run holds the directory."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from pipeline.core import params as params_module
from pipeline.core.errors import PipelineError
from pipeline.engine.checkpoint.manager import CheckpointManager
from pipeline.engine.progress import Progress
from pipeline.engine.training import build_training

ROOT = Path(__file__).resolve().parent.parent
PARAMS = params_module.load([ROOT / "params.yaml"], [
    "model.architecture=gpt2", "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.context=8",
    "train.optimizer=adamw", "train.tokens_per_step=32", "train.max_steps=10", "train.warmup_steps=0"])
IDENTITY = {"train.lr": 0.02, "model.n_layer": 1}


def manager(root, identity=IDENTITY):
    return CheckpointManager(root, keep_last=3, accelerator=Accelerator(cpu=True), identity=identity,
                             run={"setup": {"device": "cpu"}, "params": {}})


def training():
    return build_training(PARAMS, 32, 0, device="cpu", precision="fp32", activation_checkpointing=False)


def trained_step(parts, progress, val=None):
    ids = torch.randint(0, 32, (4, 9), generator=torch.Generator().manual_seed(progress.step))
    done = parts.step(progress.step, lambda micro: (ids[:, :-1], ids[:, 1:]), 1)
    progress.record_train(done.loss, parts.lr, done.update.grad_norm)
    if val is not None:
        progress.record_val(val)
        progress.judge_val(val, improved=val < progress.best_val)


def save(checkpoints, parts, progress):
    checkpoints.save(parts, progress, progress.meta(tokens_per_step=32, hours=0.5))


def state(parts):
    return {**{f"w.{k}": v for k, v in parts.raw.state_dict().items()},
            **{f"opt.{i}.{k}": v for i, s in parts.optimizer.state_dict()["state"].items() for k, v in s.items()
               if isinstance(v, torch.Tensor)}}


def test_a_saved_step_resumes_to_the_same_weights_optimizer_and_progress(tmp_path):
    parts, progress = training(), Progress()
    trained_step(parts, progress)
    trained_step(parts, progress, val=3.0)
    checkpoints = manager(tmp_path)
    save(checkpoints, parts, progress)
    assert checkpoints.last_saved_step == 2 and checkpoints.index()["latest"] == "step-000002"

    again, fresh = manager(tmp_path), training()
    resumed = again.resume(fresh)
    assert resumed == Progress(step=2, earlier_hours=0.5, history=progress.history, best_val=3.0, bad_evals=0,
                               counts=progress.counts, last_eval_step=2)
    assert again.resumed_from == "step-000002" and again.last_saved_step == 2
    assert fresh.lr == parts.lr
    mine, theirs = state(parts), state(fresh)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_an_empty_directory_starts_afresh(tmp_path):
    checkpoints = manager(tmp_path / "checkpoints")
    assert checkpoints.resume(training()) is None and checkpoints.resumed_from is None
    assert checkpoints.newest_kept() is None


def test_another_runs_checkpoints_are_moved_aside_not_resumed(tmp_path, capsys):
    parts, progress = training(), Progress()
    trained_step(parts, progress)
    save(manager(tmp_path), parts, progress)
    other = manager(tmp_path, identity={**IDENTITY, "train.lr": 0.03})
    assert other.resume(training()) is None
    aside = tmp_path / "previous-runs" / "run-1"
    assert (aside / "step-000001" / "model.safetensors").is_file()
    assert "train.lr was 0.02, now 0.03" in (aside / "WHY.txt").read_text()
    assert "comes from a different run" in capsys.readouterr().err
    assert other.newest_kept() is None and other.previous_runs == tmp_path / "previous-runs"


def test_early_stopping_ships_the_best_checkpoint(tmp_path):
    parts, progress, checkpoints = training(), Progress(), manager(tmp_path)
    trained_step(parts, progress, val=3.0)
    save(checkpoints, parts, progress)
    best = {k: v.clone() for k, v in parts.raw.state_dict().items()}
    trained_step(parts, progress, val=3.5)
    save(checkpoints, parts, progress)
    assert checkpoints.final_weights("max_steps", 2, parts) == "step-000002"
    assert not torch.equal(parts.raw.state_dict()["lm_head.weight"], best["lm_head.weight"])
    assert checkpoints.final_weights("early_stopping", 2, parts) == "step-000001 (best)"
    assert all(torch.equal(v, best[k]) for k, v in parts.raw.state_dict().items())
    assert checkpoints.newest_kept() == checkpoints.path(2) == tmp_path / "step-000002"


def test_one_run_holds_the_directory(tmp_path):
    with manager(tmp_path).locked():
        with pytest.raises(PipelineError, match="in use by another training run"):
            with manager(tmp_path).locked():
                pass
    with manager(tmp_path).locked():  # free again once the first run left
        pass
