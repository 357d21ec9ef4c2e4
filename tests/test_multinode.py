"""The multi-node launch (pipeline/core/multinode.py) as text and as torchrun parses it; the real
run over two slurmd nodes is tests/test_slurm.py."""
from __future__ import annotations

import sys

import pytest

from pipeline.core import multinode
from pipeline.core.errors import PipelineError
from pipeline.core.torchrun import SHUTDOWN_SECONDS, torchrun_args

STAGE = ["train", "--params", "params.yaml", "--log", "logs/train.log"]


def test_one_srun_task_per_node_each_a_share_of_the_devices():
    command = multinode.srun_command(8, 2, STAGE, head="gpu-001", port=29411, job="4242")
    assert command == ["srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                       sys.executable, "-m", "pipeline.core.multinode", "2", "4", "gpu-001:29411", "4242", *STAGE]


def test_each_node_runs_torchrun_with_a_c10d_rendezvous_on_the_first():
    from torch.distributed.run import parse_args

    args = parse_args(torchrun_args(4, multinode.rendezvous(2, "gpu-001:29411", "4242")))
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == \
        ("2", "4", "c10d", "gpu-001:29411", "4242")
    assert not args.standalone and args.module and args.training_script == "pipeline"
    assert args.shutdown_timeout == SHUTDOWN_SECONDS


def test_devices_that_do_not_split_over_the_nodes_are_one_line_naming_the_key():
    with pytest.raises(PipelineError, match=r"^cost\.num_devices: 3 cannot be split evenly over the 2 nodes") as info:
        multinode.per_node(3, 2)
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_outside_slurm_a_job_is_one_node(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert multinode.allocated_nodes() == 1
