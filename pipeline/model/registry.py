"""The architectures model.architecture may name: one file each in pipeline/model/architectures/,
imported here, one line each.

    spec = architecture_of(params.model)   # its pipeline.model.spec.Architecture, checked against params.model
"""
from __future__ import annotations

from pipeline.core.errors import PipelineError
from pipeline.core.params import Model
from pipeline.core.params import unknown_architecture
from pipeline.model.spec import Architecture

# An architecture is registered by its import: ARCHITECTURES collects every Architecture imported here.
from pipeline.model.architectures.gpt2 import SPEC as GPT2
from pipeline.model.architectures.llama import SPEC as LLAMA
from pipeline.model.architectures.qwen3 import SPEC as QWEN3

ARCHITECTURES: dict[str, Architecture] = {
    spec.name: spec for spec in sorted((value for value in list(globals().values()) if isinstance(value, Architecture)),
                                       key=lambda spec: spec.name)}


def lookup(name: str) -> Architecture:
    """The architecture named `name`, or a PipelineError naming model.architecture, the known names
    and the closest one."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise PipelineError(f"model.architecture: {unknown_architecture(name, tuple(ARCHITECTURES))}") from None


def architecture_of(model: Model) -> Architecture:
    """params.model's architecture, after its own checks of params.model (pipeline/core/params.py
    cannot run them: it must not import an architecture, see pipeline/model/__init__.py)."""
    spec = lookup(model.architecture)
    problems = spec.params_problems(model)
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise PipelineError(f"{len(problems)} problem(s) with model.architecture {spec.name}:\n{lines}")
    return spec
