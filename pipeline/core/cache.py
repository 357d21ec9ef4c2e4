"""budgetgpt's per-machine cache (the detected CPU, learned calibration): outside the repository,
where XDG says, or $BUDGETGPT_CACHE_DIR."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("BUDGETGPT_CACHE_DIR"):
        return Path(os.environ["BUDGETGPT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "budgetgpt"
