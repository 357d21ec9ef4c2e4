"""One checkpoint on disk: its name, its files, writing it atomically and reading it back checked.

checkpoints/step-NNNNNN/ holds the weights in save_pretrained format (model.safetensors,
config.json), one torch file per training state (optimizer.pt, scheduler.pt, scaler.pt),
meta.json (step, tokens, val loss, data position, the params and plan used), history.json (the
loss curve so far) and SHA256SUMS over all of them (`sha256sum -c SHA256SUMS` checks it by hand).
A checkpoint is written beside its final name and renamed into place, after the free space was
checked (pipeline/engine/checkpoint/space.py).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_model

from pipeline.core.atomic import staging_dir, write_json
from pipeline.core.errors import PipelineError
from pipeline.core.provenance import file_sha256
from pipeline.engine.checkpoint import space

SUMS = "SHA256SUMS"
WEIGHTS = "model.safetensors"
REQUIRED_FILES = (WEIGHTS, "meta.json", "optimizer.pt")
REQUIRED_META = ("step", "tokens", "val_loss")
MANIFEST = "manifest.json"
PREVIOUS_RUNS = "previous-runs"
WHY = "WHY.txt"

_NAME = re.compile(r"^step-(\d{6,})$")
_QUARANTINED = re.compile(r"^step-\d{6,}\.corrupt(\.\d+)?$")


class CorruptCheckpoint(PipelineError):
    """A checkpoint that fails verification; the message says which file and how, in one line."""


def dirname(step: int) -> str:
    return f"step-{step:06d}"


def steps(root: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every step-N/ directory, ascending by step, checked or not."""
    root = Path(root)
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _NAME.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def quarantined_dirs(root: Path) -> list[Path]:
    """The step-N.corrupt/ directories in root (see pipeline/engine/checkpoint/lifecycle.py: quarantine)."""
    root = Path(root)
    return sorted(c for c in root.iterdir() if _QUARANTINED.match(c.name) and c.is_dir()) if root.is_dir() else []


# ---- writing

def save(root: Path, step: int, model: torch.nn.Module, states: dict[str, Any], meta: dict[str, Any],
         history: dict[str, Any]) -> Path:
    """Write checkpoint `step` (replacing one of the same step) and return its directory.

    Raises PipelineError, before writing anything, when the disk lacks the room (see
    `space.ensure_space`), and also when a write fails for lack of space after all: the partial
    copy is removed and the checkpoints already kept are untouched.
    """
    root = Path(root)
    final = root / dirname(step)
    needed = expected_size(root, payload_bytes(model, states, meta, history))
    what = f"checkpoint {final.name}"
    space.ensure_space(root, needed, what, lambda: how_to_free(root))
    with space.full_disk_is_an_error(root, needed, what, lambda: how_to_free(root)):
        with staging_dir(final) as stage:
            _write_files(stage, model, states, meta, history)
    return final


def _write_files(stage: Path, model: torch.nn.Module, states: dict[str, Any], meta: dict[str, Any],
                 history: dict[str, Any]) -> None:
    model.save_pretrained(stage, safe_serialization=True)
    for name, state in states.items():
        torch.save(state, stage / f"{name}.pt")
    write_json(stage / "meta.json", meta)
    write_json(stage / "history.json", history)
    lines = [f"{file_sha256(f)}  {f.name}\n" for f in sorted(stage.iterdir())]
    (stage / SUMS).write_text("".join(lines), encoding="utf-8")


def payload_bytes(model: torch.nn.Module, states: dict[str, Any], meta: Any = None, history: Any = None) -> int:
    """Bytes of tensor data and JSON a checkpoint of these will hold (a lower bound on its size)."""
    tensors = list(model.state_dict().values()) + list(_tensors_in(states))
    unique = {(t.untyped_storage().data_ptr(), t.storage_offset(), t.nbytes): t.nbytes for t in tensors}
    json_bytes = len(json.dumps(meta, default=str)) + len(json.dumps(history, default=str))
    return sum(unique.values()) + json_bytes


def _tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors_in(value)


def expected_size(root: Path, estimate: int) -> int:
    """Bytes the next checkpoint will take: the newest kept one's size on disk when there is one
    (it holds what the next holds), never less than the caller's `estimate`."""
    found = steps(root)
    return max(estimate, space.disk_bytes(found[-1][1])) if found else estimate


def how_to_free(root: Path) -> str:
    """What a full disk's message advises, naming the directories a user may delete and their sizes."""
    root = Path(root)
    removable = [root / PREVIOUS_RUNS] + quarantined_dirs(root)
    sized = [f"{p} ({space.human_bytes(space.disk_bytes(p))})" for p in removable if p.is_dir()]
    delete = f"delete {', '.join(sized)}, " if sized else ""
    return (f"To make room: lower train.keep_last, {delete}or point paths.checkpoints at a bigger disk; "
            "the checkpoints already kept are intact")


# ---- reading and checking

def verify(path: Path) -> None:
    """Raise CorruptCheckpoint unless the checkpoint is complete (see `check_complete`), every
    file listed in SHA256SUMS matches its digest, and history.json (when listed) is valid JSON."""
    listed = check_complete(path)
    for name, digest in listed.items():
        if file_sha256(path / name) != digest:
            raise CorruptCheckpoint(f"{path.name}/{name} does not match its sha256 (truncated or altered)")
    if "history.json" in listed:
        read_json(path / "history.json", f"{path.name}/history.json")


def check_complete(path: Path) -> dict[str, str]:
    """The cheap half of `verify`, fit to run on every kept checkpoint after each save: SHA256SUMS
    is present and lists the required files, every listed file exists, and meta.json is a JSON
    object with step, tokens and val_loss. Returns {file name: sha256}; raises CorruptCheckpoint."""
    listed = _read_sums(path)
    for required in REQUIRED_FILES:
        if required not in listed:
            raise CorruptCheckpoint(f"{path.name}/{SUMS} does not list {required}")
    for name in listed:
        if not (path / name).is_file():
            raise CorruptCheckpoint(f"{path.name}/{name} is missing")
    _checked_meta(path, f"{path.name}/meta.json")
    return listed


def _read_sums(path: Path) -> dict[str, str]:
    sums = path / SUMS
    if not sums.is_file():
        raise CorruptCheckpoint(f"{path.name} has no {SUMS} (an unfinished or foreign directory)")
    listed = {}
    for number, line in enumerate(_read_text(sums, f"{path.name}/{SUMS}").splitlines(), 1):
        digest, _, name = line.partition("  ")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not name or "/" in name:
            raise CorruptCheckpoint(f"{path.name}/{SUMS} line {number} is not '<sha256>  <file name>'")
        listed[name] = digest
    return listed


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json as a dict; CorruptCheckpoint (one line naming the file) if missing or not JSON."""
    return _checked_meta(path, str(Path(path) / "meta.json"))


def read_history(path: Path) -> dict[str, Any]:
    """history.json as a dict; CorruptCheckpoint (one line naming the file) if missing or not JSON."""
    file = Path(path) / "history.json"
    history = read_json(file, str(file))
    if not isinstance(history, dict):
        raise CorruptCheckpoint(f"{file} is not a JSON object")
    return history


def _checked_meta(path: Path, label: str) -> dict[str, Any]:
    meta = read_json(Path(path) / "meta.json", label)
    if not isinstance(meta, dict):
        raise CorruptCheckpoint(f"{label} is not a JSON object")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise CorruptCheckpoint(f"{label} lacks {', '.join(missing)}")
    return meta


def read_json(file: Path, label: str) -> Any:
    """The JSON in `file`; CorruptCheckpoint naming it by `label` when it is missing or damaged."""
    try:
        return json.loads(_read_text(file, label))
    except json.JSONDecodeError as exc:
        raise CorruptCheckpoint(f"{label} is not valid JSON ({exc.msg} at line {exc.lineno} "
                                f"column {exc.colno})") from None


def _read_text(file: Path, label: str) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{label} is missing") from None
    except UnicodeDecodeError:
        raise CorruptCheckpoint(f"{label} is not UTF-8 text") from None


def load_weights(model: torch.nn.Module, path: Path) -> None:
    missing, unexpected = load_model(model, path / WEIGHTS, strict=False)
    # save_pretrained stores a tied lm_head once, as the token embedding; an untied one is its own tensor
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CorruptCheckpoint(f"{path.name}/{WEIGHTS} does not fit this model "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_state(path: Path, name: str) -> Any:
    return torch.load(path / f"{name}.pt", map_location="cpu", weights_only=True)
