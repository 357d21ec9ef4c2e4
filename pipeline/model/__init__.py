"""The model: pipeline/model/build.py builds it, pipeline/model/compute.py prices it, and each
architecture is one file in pipeline/model/architectures/, registered in pipeline/model/registry.py.

This file only lists that directory, for pipeline/core/params.py: params must name an architecture
at load time, yet must not import one. Every stage's code dependencies are the modules it imports
(pipeline.registry.code_deps), and the tokenize stage imports params, so an import of an
architecture there would make a model edit re-tokenize.
"""
from __future__ import annotations

import difflib
from pathlib import Path

ARCHITECTURES_DIR = Path(__file__).resolve().parent / "architectures"


def architecture_names() -> tuple[str, ...]:
    """The names model.architecture may take: one per file in pipeline/model/architectures/."""
    return tuple(sorted(path.stem for path in ARCHITECTURES_DIR.glob("*.py") if not path.stem.startswith("_")))


def unknown_architecture(name: str, known: tuple[str, ...]) -> str:
    """The message for a model.architecture that is not one of `known`, with the closest match."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown architecture {name!r}{hint}: one of {', '.join(known)}"
