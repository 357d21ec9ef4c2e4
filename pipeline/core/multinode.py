"""Train across the nodes of a SLURM job: the stage command, started once on the first node of a
job that holds M nodes (`nodes: M` for train in the SLURM profile, README: "A SLURM cluster"),
replaces itself with

    srun --overlap --nodes M --ntasks-per-node 1 python -m pipeline.core.multinode M N/M HEAD:PORT JOB ARGS...

one task per node, each of which runs `python -m pipeline ARGS` as N/M workers (N =
cost.num_devices) through torchrun's launcher with `--nnodes M --rdzv-backend c10d --rdzv-endpoint
HEAD:PORT --rdzv-id JOB` (pipeline/core/torchrun.py): a c10d rendezvous on the first node. That is
`srun torchrun --nnodes M ...` with the stage's own arguments kept out of torchrun's parser.
srun, not ssh, starts them: SLURM tracks and signals every one (scancel: SIGTERM to each step,
SIGKILL after KillWait). `--overlap`: the step this command runs in holds the job's CPUs, and a
new step would otherwise wait for them (srun(1)).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from pipeline.core.errors import PipelineError
from pipeline.core.torchrun import run_as_processes

# What a new step may inherit from the step this command runs in: the job's identity and config.
# Its other SLURM_* variables describe that step (one task, its CPUs) and srun reads them as defaults.
_JOB_IDENTITY = {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CONF", "SLURM_CLUSTER_NAME"}


def allocated_nodes() -> int:
    """The nodes of the SLURM job this process runs in (1 outside SLURM), as the controller has
    them: a step's SLURM_* variables describe the step, and Snakemake's job-step plugin keeps only
    SLURM_JOB_ID of the job's own."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return 1
    answer = subprocess.run(["squeue", "--noheader", "--jobs", job, "--format=%D"], capture_output=True, text=True)
    count = answer.stdout.strip()
    if answer.returncode != 0 or not count.isdigit():
        raise PipelineError(f"SLURM job {job}: `squeue --jobs {job}` did not say how many nodes it holds "
                            f"({(answer.stderr or answer.stdout).strip()}): check that squeue reaches the cluster")
    return int(count)


def per_node(num_devices: int, nodes: int) -> int:
    if num_devices % nodes:
        raise PipelineError(f"cost.num_devices: {num_devices} cannot be split evenly over the {nodes} nodes of "
                            f"this SLURM job: set it to a multiple of {nodes}, or change `nodes` of train in "
                            "the SLURM profile")
    return num_devices // nodes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def srun_command(num_devices: int, nodes: int, argv: list[str], *, head: str, port: int, job: str) -> list[str]:
    """The command that runs `python -m pipeline ARGV` as num_devices workers over `nodes` nodes."""
    return ["srun", "--overlap", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1", sys.executable, "-m", "pipeline.core.multinode",
            str(nodes), str(per_node(num_devices, nodes)), f"{head}:{port}", job, *argv]


def run_on_nodes(num_devices: int, nodes: int, argv: list[str]) -> int:
    """Replace this process with srun: scancel's SIGTERM and srun's exit code are then the step's."""
    command = srun_command(num_devices, nodes, argv, head=socket.gethostname(), port=_free_port(),
                           job=os.environ["SLURM_JOB_ID"])
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("SLURM_", "SRUN_", "SBATCH_")) or key in _JOB_IDENTITY}
    print(f"train on {nodes} nodes: {' '.join(command)}", flush=True)
    sys.stderr.flush()
    os.execvpe(command[0], command, environ)
    return 1   # not reached


def rendezvous(nodes: int, endpoint: str, job: str) -> list[str]:
    return ["--nnodes", str(nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", job]


def main(args: list[str]) -> int:
    """One node's share: `python -m pipeline.core.multinode NODES PER_NODE HEAD:PORT JOB ARGV...`."""
    nodes, processes, endpoint, job, *argv = args
    return run_as_processes(int(processes), argv, rendezvous(int(nodes), endpoint, job))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
