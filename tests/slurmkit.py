"""A real SLURM on localhost for the tests: munged, slurmctld and one slurmd per node, from
Debian's `slurm-wlm` and `munge` packages (22.05), all in one private directory.

The daemons and the clients find the cluster through SLURM_CONF and reach a private munged
through `AuthInfo=socket=...` (slurm.conf(5): AuthInfo). One path outside that directory is
used: the Snakemake job-step plugin drops every SLURM_* variable but the job's ids before the
`srun` inside each batch job (snakemake-executor-plugin-slurm#164), so that srun reads SLURM's
default /etc/slurm/slurm.conf. While the cluster runs, that path is a link to its config; a
machine that already has one cannot host this cluster (ConfigTaken). No systemd and no cgroups: processes are tracked
by their parent ids (proctrack/linuxproc) and tasks are not bound (task/none); no accounting
database, so job states come from `squeue`, which keeps a finished job for MinJobAge seconds.

    with LocalSlurm(tmp, nodes=["n1"]) as slurm:
        subprocess.run(["sbatch", ...], env=slurm.env)
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun")
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")   # where SLURM's clients look without SLURM_CONF
KILL_WAIT_S = 30   # SIGTERM to a cancelled job's steps, then SIGKILL after this (slurm.conf(5))


def missing_commands() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None]


class ConfigTaken(RuntimeError):
    """The default config path holds another cluster's config (or cannot be written)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    """What a slurmd registers must not exceed the machine's (else the node is drained)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class LocalSlurm:
    """A cluster of `nodes` slurmd daemons on this machine (several only where SLURM allows more
    than one slurmd per host, each with its own port)."""

    def __init__(self, root: Path, nodes: tuple[str, ...] = ("localhost",), partition: str = "cpu"):
        self.root, self.nodes, self.partition = root, tuple(nodes), partition
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.processes: list[subprocess.Popen] = []
        self.linked = False
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # ---- configuration ------------------------------------------------------------------------
    def _write_conf(self) -> None:
        cpus = os.cpu_count() or 1
        node_lines = [f"NodeName={name} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 "
                      f"Port={_free_port()} CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN"
                      for name in self.nodes]
        spool = self.root / "spool"
        settings = {
            "ClusterName": "budgetgpt-ci",
            "SlurmctldHost": f"{socket.gethostname()}(127.0.0.1)",
            "SlurmctldPort": _free_port(),
            "SlurmUser": "root",
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "CredType": "cred/munge",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "MpiDefault": "none",
            "SchedulerType": "sched/backfill",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            "ReturnToService": 2,
            "MinJobAge": 600,        # squeue answers for a finished job this long (no sacct here)
            "KillWait": KILL_WAIT_S,
            "SlurmctldTimeout": 30,
            "SlurmdTimeout": 60,
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": spool / "%n",
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd-%n.pid",
            "SlurmctldLogFile": self.root / "slurmctld.log",
            "SlurmdLogFile": self.root / "slurmd-%n.log",
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
        }
        lines = [f"{key}={value}" for key, value in settings.items()] + node_lines
        lines.append(f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        for directory in ("state", "spool", "munge"):
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        for name in self.nodes:
            (spool / name).mkdir(exist_ok=True)

    # ---- daemons ------------------------------------------------------------------------------
    def _start(self, *cmd: str, log: str) -> None:
        with open(self.root / log, "ab") as out:
            self.processes.append(subprocess.Popen([*cmd], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, start_new_session=True))

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.root.chmod(0o755)
        (self.root / "munge").chmod(0o700)
        self._start("munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                    f"--key-file={key}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                    f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                    f"--log-file={self.root / 'munge' / 'munged.log'}", log="munged.out")
        self._wait(lambda: self.munge_socket.exists(), "munged's socket")

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited {process.returncode} waiting for {what}: "
                                       f"see {self.root}")
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}: see {self.root}")

    def node_states(self) -> dict[str, str]:
        out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N %T"], env=self.env,
                             capture_output=True, text=True).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def _link_default_conf(self) -> None:
        if DEFAULT_CONF.is_symlink() and not DEFAULT_CONF.exists():   # left by a cluster that was killed
            DEFAULT_CONF.unlink()
        try:
            DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
            DEFAULT_CONF.symlink_to(self.conf)
        except OSError as exc:
            raise ConfigTaken(f"{DEFAULT_CONF}: {exc.strerror}; the job steps' srun would not find this "
                              "cluster (it needs root and no SLURM configured on the machine)") from None
        self.linked = True

    def start(self) -> "LocalSlurm":
        self._write_conf()
        self._link_default_conf()
        self._start_munge()
        self._start("slurmctld", "-D", "-i", "-f", str(self.conf), log="slurmctld.out")
        for name in self.nodes:
            self._start("slurmd", "-D", "-N", name, "-f", str(self.conf), log=f"slurmd-{name}.out")
        self._wait(lambda: all(s == "idle" for s in self.node_states().values())
                   and set(self.node_states()) == set(self.nodes), "every node idle in sinfo")
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if self.linked and DEFAULT_CONF.is_symlink() and DEFAULT_CONF.resolve() == self.conf.resolve():
            DEFAULT_CONF.unlink()
        self.linked = False

    def __enter__(self) -> "LocalSlurm":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- what the tests read ------------------------------------------------------------------
    def controller_log(self) -> str:
        return (self.root / "slurmctld.log").read_text(errors="replace")
