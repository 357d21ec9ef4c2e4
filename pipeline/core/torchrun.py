"""`python -m pipeline ARGV` as several worker processes through torchrun's launcher
(torch.distributed.run, called in this process), on one machine or, with torchrun's rendezvous
arguments, as one node's share of several: what pipeline/core/launch.py runs for one machine and
pipeline/core/multinode.py for each node of a SLURM job.

torchrun starts each worker in its own session, so a Ctrl-C on the terminal reaches only the
launcher, which sends that same signal to every worker once (torch/distributed/elastic/agent/server/api.py)
and waits up to SHUTDOWN_SECONDS for them: they finish the step, checkpoint and exit. The exit code
is then the signal's (130 for SIGINT, 143 for SIGTERM), or the first failed worker's (2: bad input,
3: over budget).
"""
from __future__ import annotations

# How long the launcher waits for signalled workers to checkpoint before it kills them: a
# checkpoint of the largest model the catalog plans for takes seconds to a minute on local disk.
SHUTDOWN_SECONDS = 600


def torchrun_args(processes: int, rendezvous: list[str] | None = None) -> list[str]:
    """torchrun's arguments for `python -m pipeline` as `processes` workers on this machine, alone
    or (`rendezvous`: torchrun's --nnodes/--rdzv-* arguments) with other machines."""
    return [*(rendezvous or ["--standalone"]), "--nproc_per_node", str(processes),
            "--shutdown-timeout", str(SHUTDOWN_SECONDS), "-m", "pipeline"]


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
