"""What a stage sees of params: exactly the keys pipeline/registry.py declares for it.

    seen = view(params, "train", ("paths.tokens", "model", "train"))
    seen.train.lr            # declared: its value
    seen.cost.budget_usd     # UndeclaredParam: "the train stage reads cost.budget_usd (FILE:LINE), ..."

A driver reruns a stage when a key it declares changes, and only then: a key read but not
declared leaves stale outputs behind, silently. A view refuses the read at once instead, so every
run of a stage through pipeline.registry.run_stage (the CLI's, each test's) catches one.

The view is a Params whose sections are subclasses of theirs (ParamsView, TrainView, ...): library
code that takes a Params or a section takes a view unchanged, isinstance holds, a pydantic field
typed Model accepts one as it is, and model_copy keeps the guard. A read of an undeclared field
raises, by attribute or by a dump (model_dump, section(), as_dict(), dict(), ==, hash) of a
section that holds one; repr shows the declared fields alone. The error is no AttributeError,
which getattr with a default or hasattr would swallow.

Only the registry imports this module, so it is in no stage's code deps: it changes no output, it
only refuses a read.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.core import params as params_module
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params, Section

ROOT = Path(__file__).resolve().parents[2]
# frames that only pass a read on: the code that made it is the first frame outside them
_PASSING_ON = {Path(__file__).resolve(), Path(params_module.__file__).resolve()}


class UndeclaredParam(PipelineError):
    """A stage read a params key its registry entry does not declare: a defect in the code (the
    message says where), not in the params."""

    exit_code = 1


def view(params: Params, stage: str, declared: Iterable[str]) -> Params:
    """`params` as the stage `stage` sees them; `declared`: its registry keys ("train.lr") and
    whole sections ("model")."""
    declared = frozenset(declared)
    sections = {name: _guarded(getattr(params, name), stage, name, declared) for name in Params.model_fields}
    seen = ParamsView.model_construct(_fields_set=params.model_fields_set, **sections)
    seen._auto = dict(params._auto)
    return seen


def _guarded(section: Section, stage: str, name: str, declared: frozenset[str]) -> Section:
    undeclared = frozenset(field for field in type(section).model_fields
                           if name not in declared and f"{name}.{field}" not in declared)
    cls = _section_view(type(section), stage, name, undeclared)
    return cls.model_construct(_fields_set=section.model_fields_set, **section.__dict__)


class _Whole:
    """The reads of every field at once: each refuses a view that holds an undeclared one."""

    def _refuse_undeclared(self) -> None:
        raise NotImplementedError

    def model_dump(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._refuse_undeclared()
        return super().model_dump(*args, **kwargs)

    def model_dump_json(self, *args: Any, **kwargs: Any) -> str:
        self._refuse_undeclared()
        return super().model_dump_json(*args, **kwargs)

    def __iter__(self):
        self._refuse_undeclared()
        return super().__iter__()

    def __eq__(self, other: object) -> bool:
        """Equal to the params or section it views, as pydantic's own == would not be (another class)."""
        self._refuse_undeclared()
        if not isinstance(other, BaseModel):
            return NotImplemented
        if isinstance(other, _Whole):
            other._refuse_undeclared()
        return (_viewed(type(self)) is _viewed(type(other)) and self.__dict__ == other.__dict__
                and self.__pydantic_private__ == other.__pydantic_private__)

    def __hash__(self) -> int:   # defining __eq__ alone would drop the frozen sections' hash
        self._refuse_undeclared()
        return super().__hash__()


class _SectionGuard(_Whole):
    __stage__ = ""
    __section__ = ""
    __undeclared__: frozenset[str] = frozenset()

    def __getattribute__(self, name: str) -> Any:
        cls = type(self)
        if name in cls.__undeclared__:
            raise undeclared(cls.__stage__, f"{cls.__section__}.{name}")
        return super().__getattribute__(name)

    def _refuse_undeclared(self) -> None:
        cls = type(self)
        for name in cls.model_fields:
            if name in cls.__undeclared__:
                raise undeclared(cls.__stage__, f"{cls.__section__}.{name}")

    def __repr_args__(self):
        return [(k, v) for k, v in super().__repr_args__() if k not in type(self).__undeclared__]


class ParamsView(_Whole, Params):
    """A Params whose sections are views (_SectionGuard)."""

    def _refuse_undeclared(self) -> None:
        for name in type(self).model_fields:
            getattr(self, name)._refuse_undeclared()

    def is_auto(self, key: str) -> bool:
        _read(self, key)   # whether train.lr was auto tells of its value
        return super().is_auto(key)

    def auto_notes(self) -> list[str]:
        for key in self._auto:
            _read(self, key)
        return super().auto_notes()


def _viewed(cls: type[BaseModel]) -> type[BaseModel]:
    """The class a view's class derives from: ModelView -> Model; Model -> Model."""
    return next(c for c in cls.__mro__ if not issubclass(c, _Whole))


def _read(params: Params, key: str) -> Any:
    section, _, field = key.partition(".")
    return getattr(getattr(params, section), field)


@functools.cache
def _section_view(cls: type[Section], stage: str, name: str, undeclared: frozenset[str]) -> type[Section]:
    namespace = {"__module__": __name__, "__stage__": stage, "__section__": name, "__undeclared__": undeclared}
    return type(f"{cls.__name__}View", (_SectionGuard, cls), namespace)


def undeclared(stage: str, key: str) -> UndeclaredParam:
    where = _reader()
    at = f" ({where})" if where else ""
    return UndeclaredParam(f"the {stage} stage reads {key}{at}, which pipeline/registry.py does not declare for it "
                           f"(a change would not rerun the stage): add {key} to the stage's params there, then run "
                           "python -m pipeline dag; or stop reading it")


def _reader() -> str:
    """FILE:LINE of the code that read the key: the first frame outside params, this module and pydantic."""
    frame = sys._getframe(1)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.resolve() not in _PASSING_ON and "pydantic" not in path.parts:
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            return f"{where}:{frame.f_lineno}"
        frame = frame.f_back
    return ""
