"""One stage command for any number of devices: `python -m pipeline train` whose plan is for N > 1
devices (reports/plan.json's `devices`: cost.num_devices as the estimate stage read it) runs
itself as N processes, as

    torchrun --standalone --nproc_per_node N --shutdown-timeout 600 -m pipeline train ARGS...

would (torch.distributed.run, called in this process), so dvc.yaml's command, the Snakefile's and
a typed one behave the same. A process already inside a launch (torchrun, `srun torchrun`,
accelerate launch: LOCAL_RANK is set) trains as the rank it was given.

Why torchrun and not `accelerate launch`: on CPU `accelerate launch --cpu --num_processes 2`
starts one process, and torchrun is what accelerate itself runs for several GPUs. torchrun starts
each worker in its own session, so a Ctrl-C on the terminal reaches only the launcher, which sends
that same signal to every worker once (torch/distributed/elastic/agent/server/api.py) and waits up
to SHUTDOWN_SECONDS for them: they finish the step, checkpoint and exit. The exit code is then the
signal's (130 for SIGINT, 143 for SIGTERM), or the first failed worker's (2: bad input, 3: over
budget).
"""
from __future__ import annotations

import json
from pathlib import Path


# How long the launcher waits for signalled workers to checkpoint before it kills them: a
# checkpoint of the largest model the catalog plans for takes seconds to a minute on local disk.
SHUTDOWN_SECONDS = 600


def torchrun_args(processes: int, rendezvous: list[str] | None = None) -> list[str]:
    """torchrun's arguments for `python -m pipeline` as `processes` workers on this machine, alone
    or (`rendezvous`: torchrun's --nnodes/--rdzv-* arguments) with other machines."""
    return [*(rendezvous or ["--standalone"]), "--nproc_per_node", str(processes),
            "--shutdown-timeout", str(SHUTDOWN_SECONDS), "-m", "pipeline"]


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
    from pipeline.core import multinode   # which runs its nodes' shares through run_as_processes

    num_devices = planned_devices(plan)
    nodes = multinode.allocated_nodes()
    if nodes > 1:
        return multinode.run_on_nodes(num_devices, nodes, argv)
    if num_devices > 1:
        return run_as_processes(num_devices, argv)
    return None


def run_as_processes(processes: int, argv: list[str], rendezvous: list[str] | None = None) -> int:
    """`python -m pipeline ARGV` as `processes` workers; the exit code a single process would have."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(torchrun_args(processes, rendezvous))
    # the stage's arguments as given: parsed among torchrun's own, `--log` would be taken for its --log-dir
    args.training_script_args = list(argv)
    try:
        run(args)
        return 0
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        return worker_exit_code(min(exc.failures.items())[1].exitcode)


def worker_exit_code(code: int) -> int:
    """A worker's exit code as a shell reports it: killed by signal S (Popen's -S) is 128 + S."""
    return 128 + -code if code < 0 else code
