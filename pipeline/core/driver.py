"""How a stage's process stands to what started it, for every stage: a worker of a launch
(pipeline/core/launch.py) or a stage under `dvc repro`, which must not outlive DVC."""
from __future__ import annotations

import os
import signal
import sys


def inside_launch() -> bool:
    """True in a worker started by torchrun or accelerate launch (each sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def first_process() -> bool:
    """This process alone, or rank 0 of a launch (torchrun sets RANK)."""
    return os.environ.get("RANK", "0") == "0"


def stop_with_driver() -> None:
    """Under `dvc repro` (which sets DVC_STAGE), a SIGTERM when DVC ends: a SIGTERM to dvc's PID
    kills it at once (it handles no SIGTERM, dvc/stage/run.py) and would leave train running
    unwatched; this way train checkpoints at the step and exits 143. The stage is dvc's child
    (`$SHELL -c CMD` runs a single command in place). Linux only (prctl PR_SET_PDEATHSIG)."""
    if "DVC_STAGE" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1   # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() == 1:   # dvc ended before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
