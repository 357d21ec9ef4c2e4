"""A throwaway copy of the repository, committed to git as a user's clone would be (DVCLive and
provenance need a revision), for the end-to-end tests of the drivers and the container."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "tiny.yaml"
# outputs and tools at the top of the repository (pipeline/reports/ is code, reports/ an output)
_TOP_OUTPUTS = {".git", "data", "checkpoints", "models", "reports", "logs", ".snakemake", "cache", "tmp",
                ".pytest_cache", "bench", "dvclive"}


def _outputs(directory: str, names: list[str]) -> set[str]:
    """What a clone lacks: outputs, and every virtualenv (.venv, .venv-cloud: thousands of files)."""
    top = Path(directory).resolve() == ROOT
    return {n for n in names if n == "__pycache__" or (top and (n in _TOP_OUTPUTS or n.startswith(".venv")))}


def copy_checkout(dest: Path) -> str:
    """Copy the sources (no outputs) to `dest`, commit them, return the revision."""
    shutil.copytree(ROOT, dest, ignore=_outputs)
    git = ["git", "-C", str(dest), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "checkout"]):
        subprocess.run(git + args, check=True, capture_output=True)
    return subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
