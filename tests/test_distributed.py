"""DDP on CPU (gloo): 2 processes x accumulation a == 1 process x accumulation 2a.

torchrun, not `accelerate launch --cpu --num_processes 2`, which starts one process here.
"""
from __future__ import annotations

import sys

import pytest

from pipeline.registry import run_stage
from pipeline.engine import checkpoint as ckpt
from pipeline.engine import trainer as train
from trainkit import cli, final_weights, manifest, max_difference, report, run_cli, tiny_params, train_losses

RUN = ("train.micro_batch_size=2", "train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=2")


def test_two_processes_match_one_with_twice_the_accumulation(demo_tokens, tmp_path):
    single = tmp_path / "single"
    one = run_stage("train", tiny_params(demo_tokens, single, *RUN)).as_dict()
    assert (one["world"], one["grad_accum_steps"]) == (1, 4)

    ddp = tmp_path / "ddp"
    args = cli(demo_tokens, ddp, *RUN, "cost.num_devices=2")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "pipeline", *args[3:]]
    done = run_cli(torchrun)
    assert done.returncode == 0, done.stderr
    two = report(ddp)
    assert (two["world"], two["grad_accum_steps"], two["micro_batch_size"]) == (2, 2, 2)

    assert max_difference(final_weights(ddp), final_weights(single)) < 2e-5
    assert train_losses(ddp) == pytest.approx(train_losses(single), abs=1e-5)
    assert [e["loss"] for e in two["loss"]["val"]] == pytest.approx([e["loss"] for e in one["loss"]["val"]], abs=1e-5)
    # one writer: each checkpoint once, complete, and listed once
    assert [e["step"] for e in manifest(ddp)["checkpoints"]] == [2, 4]
    for entry in manifest(ddp)["checkpoints"]:
        ckpt.verify(ddp / "checkpoints" / entry["dir"])
    assert not list((ddp / "checkpoints").glob(".*"))
