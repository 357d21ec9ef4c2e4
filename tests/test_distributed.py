"""DDP on CPU (gloo): 2 processes x accumulation a == 1 process x accumulation 2a.

torchrun, not `accelerate launch --cpu --num_processes 2`, which starts one process here; typed by
hand, or started by the stage command itself from the plan's devices (pipeline/core/launch.py).
"""
from __future__ import annotations

import sys

import pytest

from pipeline.registry import run_stage
from pipeline.engine import checkpoint as ckpt
from pipeline.engine import trainer as train
from trainkit import cli, final_weights, manifest, max_difference, report, run_cli, tiny_params, train_losses

RUN = ("train.micro_batch_size=2", "train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=2")


@pytest.fixture(scope="module")
def single(demo_tokens, tmp_path_factory):
    """One process, accumulation 4: the run both launches are held to."""
    base = tmp_path_factory.mktemp("single")
    one = run_stage("train", tiny_params(demo_tokens, base, *RUN)).as_dict()
    assert (one["world"], one["grad_accum_steps"]) == (1, 4)
    return base, one


def test_two_processes_match_one_with_twice_the_accumulation(demo_tokens, single, tmp_path):
    ddp = tmp_path / "ddp"
    args = cli(demo_tokens, ddp, *RUN, "cost.num_devices=2")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "pipeline", *args[3:]]
    done = run_cli(torchrun)
    assert done.returncode == 0, done.stderr
    _same_run(ddp, *single)


def test_num_devices_makes_the_stage_command_start_that_many_processes(demo_tokens, single, tmp_path):
    """The command both drivers run, unchanged: cost.num_devices: 2 alone makes it two processes,
    whose output all reaches the one --log file."""
    ddp, log = tmp_path / "ddp", tmp_path / "train.log"
    done = run_cli(cli(demo_tokens, ddp, *RUN, "cost.num_devices=2") + ["--log", str(log)])
    assert done.returncode == 0, done.stderr
    _same_run(ddp, *single)
    text = log.read_text()
    assert "x 2 process(es)" in text and "stopped: max_steps" in text, text


def test_the_process_count_is_the_plans_not_the_command_lines(demo_tokens, single, tmp_path):
    """Snakemake hands train only the keys it declares, and cost.num_devices is not one: the count
    comes from the plan the estimate made, wherever the value was set for it."""
    ddp = tmp_path / "ddp"
    tiny_params(demo_tokens, ddp, *RUN, "cost.num_devices=2")   # the plan, for 2 devices
    done = run_cli(cli(demo_tokens, ddp, *RUN, plan=False))      # train's command: params.yaml's 1
    assert done.returncode == 0, done.stderr
    _same_run(ddp, *single)


def _same_run(ddp, single, one) -> None:
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
