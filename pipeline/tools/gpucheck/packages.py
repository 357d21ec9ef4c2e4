"""What to install first: `python -m pipeline.tools.gpucheck` runs where only torch and
transformers were installed, so it checks that every package the pipeline imports is there before
importing any, and says in one line what to pip install."""
from __future__ import annotations

import importlib.util
from pathlib import Path

LOCK_FILE = Path(__file__).resolve().parents[3] / "requirements.lock"
# import name -> distribution: what the modules this check imports need (tests/test_gpucheck.py
# checks the list against their import statements)
REQUIRED = {"torch": "torch", "transformers": "transformers", "pydantic": "pydantic", "yaml": "PyYAML",
            "numpy": "numpy", "safetensors": "safetensors"}
UNPINNED = {"torch", "transformers"}   # the ones the VM brings, whichever recent version it has
TORCH_INSTALL = "https://pytorch.org/get-started/locally/"


def missing_packages() -> list[str]:
    return [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]


def install_line(missing: list[str]) -> str:
    """One line: the pip command, pinned as requirements.lock pins them (torch and transformers
    as the VM has them)."""
    pins = _lock_pins()
    names = [name if name in UNPINNED else pins.get(name.lower(), name) for name in missing]
    torch_note = f" (torch: the CUDA build from {TORCH_INSTALL})" if "torch" in missing else ""
    return f"gpu-check needs packages this Python lacks: pip install {' '.join(names)}{torch_note}"


def preflight() -> str | None:
    """What to install before the check can run, in one line; None when nothing."""
    missing = missing_packages()
    if missing:
        return install_line(missing)
    import transformers

    # the train stage turns checkpointing on through this method (pipeline/stages/train.py)
    if not hasattr(transformers.PreTrainedModel, "activation_checkpointing_enable"):
        pin = _lock_pins().get("transformers", "transformers")
        return (f"gpu-check needs the transformers the pipeline is built on: transformers "
                f"{transformers.__version__} has no PreTrainedModel.activation_checkpointing_enable: pip install {pin}")
    return None


def _lock_pins() -> dict[str, str]:
    try:
        lines = LOCK_FILE.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    return {line.split("==")[0].strip().lower(): line.strip() for line in lines if "==" in line}
