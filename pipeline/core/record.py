"""Records: the JSON files one stage writes and a later stage reads, each a versioned, validated
pydantic model owned by the module of the stage that writes it.

    class Plan(Record):
        FORMAT = 1
        WRITTEN_BY = "estimate"
        micro_batch_size: int
        ...

    Plan(...).write(path)        # atomic
    plan = Plan.read(path)       # one clear error naming the file and the stage to rerun

A record carries its format number; a file from another format, with a field missing or of the
wrong type, or not JSON at all, is one PipelineError that names the stage to rerun.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core.atomic import write_json
from pipeline.core.errors import PipelineError

R = TypeVar("R", bound="Record")


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    FORMAT: ClassVar[int]
    WRITTEN_BY: ClassVar[str]    # the stage that writes it: what a reader tells the user to rerun

    format: int

    @classmethod
    def make(cls: type[R], **fields: Any) -> R:
        return cls(format=cls.FORMAT, **fields)

    @classmethod
    def read(cls: type[R], path: str | Path) -> R:
        path = Path(path)
        rerun = f"rerun the {cls.WRITTEN_BY} stage (python -m pipeline {cls.WRITTEN_BY})"
        if not path.is_file():
            raise PipelineError(f"{path} not found: run the {cls.WRITTEN_BY} stage first "
                                f"(python -m pipeline {cls.WRITTEN_BY})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PipelineError(f"{path} is not valid JSON ({exc}): {rerun}") from None
        if not isinstance(data, dict):
            raise PipelineError(f"{path} should hold a JSON object: {rerun}")
        if data.get("format") != cls.FORMAT:
            raise PipelineError(f"{path} is format {data.get('format')!r} of a {cls.__name__} record; this "
                                f"budgetgpt reads format {cls.FORMAT}: {rerun}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].lower()}"
                                 for e in exc.errors()[:5])
            raise PipelineError(f"{path} is not a valid {cls.__name__} record ({problems}): {rerun}") from None

    @classmethod
    def read_if_present(cls: type[R], path: str | Path) -> R | None:
        return cls.read(path) if Path(path).is_file() else None

    def write(self, path: str | Path) -> None:
        write_json(path, self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
