"""One stage command for any number of devices: `python -m pipeline train` whose plan is for N > 1
devices (reports/plan.json's `devices`: cost.num_devices as the estimate stage read it) runs
itself as N processes, as

    torchrun --standalone --nproc_per_node N --shutdown-timeout 600 -m pipeline train ARGS...

would (torch.distributed.run, called in this process), so dvc.yaml's command, the Snakefile's and
a typed one behave the same. A process already inside a launch (torchrun, `srun torchrun`,
accelerate launch: LOCAL_RANK is set) trains as the rank it was given.

Why torchrun and not `accelerate launch`: on CPU `accelerate launch --cpu --num_processes 2`
starts one process, and torchrun is what accelerate itself runs for several GPUs. How the workers
are started, signalled and their exit code read: pipeline/core/torchrun.py.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.core import multinode
from pipeline.core.torchrun import run_as_processes


def planned_devices(plan: Path) -> int:
    """The devices the estimate stage planned for: the count train reads and holds the run to
    (pipeline/engine/plan.py), wherever cost.num_devices was set. train declares the plan and not
    cost.num_devices, so a driver's params overlay for train (Snakemake's) does not carry the key.
    1 where there is no readable plan: the stage then says what is wrong with it, in one line."""
    try:
        devices = json.loads(Path(plan).read_text(encoding="utf-8")).get("devices")
    except (OSError, ValueError, AttributeError):
        return 1
    return devices if isinstance(devices, int) and devices > 0 else 1


def launch(plan: Path, argv: list[str]) -> int | None:
    """`python -m pipeline ARGV` as the plan's number of processes, spread over the nodes of a SLURM
    job that holds several (pipeline/core/multinode.py), and their exit code; None when the run is
    this one process, which then runs the stage itself."""
    num_devices = planned_devices(plan)
    nodes = multinode.allocated_nodes()
    if nodes > 1:
        return multinode.run_on_nodes(num_devices, nodes, argv)
    if num_devices > 1:
        return run_as_processes(num_devices, argv)
    return None
