"""Versioned, atomic, checksummed checkpoints: checkpoints/step-NNNNNN/ and checkpoints/manifest.json.

A checkpoint directory holds the weights in save_pretrained format (model.safetensors,
config.json), one torch file per training state (optimizer.pt, scheduler.pt, scaler.pt),
meta.json (step, tokens, val loss, data position, the params and plan used), history.json (the
loss curve so far) and SHA256SUMS over all of them (`sha256sum -c SHA256SUMS` checks it by hand).
It is written beside its final name and renamed into place, so a kill leaves either the whole
checkpoint or a hidden staging directory that the next run removes.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model

from pipeline.atomic import staging_dir, write_json
from pipeline.provenance import file_sha256

SUMS = "SHA256SUMS"
WEIGHTS = "model.safetensors"
_NAME = re.compile(r"^step-(\d{6,})$")


class CorruptCheckpoint(Exception):
    """A checkpoint that fails verification; the message says which file and how."""


def dirname(step: int) -> str:
    return f"step-{step:06d}"


def save(root: Path, step: int, model: torch.nn.Module, states: dict[str, Any], meta: dict[str, Any],
         history: dict[str, Any]) -> Path:
    """Write checkpoint `step` (replacing one of the same step) and return its directory."""
    final = Path(root) / dirname(step)
    with staging_dir(final) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        for name, state in states.items():
            torch.save(state, stage / f"{name}.pt")
        write_json(stage / "meta.json", meta)
        write_json(stage / "history.json", history)
        lines = [f"{file_sha256(f)}  {f.name}\n" for f in sorted(stage.iterdir())]
        (stage / SUMS).write_text("".join(lines), encoding="utf-8")
    return final


def verify(path: Path) -> None:
    """Raise CorruptCheckpoint unless every file listed in SHA256SUMS is present and intact."""
    sums = path / SUMS
    if not sums.is_file():
        raise CorruptCheckpoint(f"{path.name} has no {SUMS} (an unfinished or foreign directory)")
    listed = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for required in (WEIGHTS, "meta.json", "optimizer.pt"):
        if required not in listed:
            raise CorruptCheckpoint(f"{path.name}/{SUMS} does not list {required}")
    for name, digest in listed.items():
        file = path / name
        if not file.is_file():
            raise CorruptCheckpoint(f"{path.name}/{name} is missing")
        if file_sha256(file) != digest:
            raise CorruptCheckpoint(f"{path.name}/{name} does not match its sha256 (truncated or altered)")


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text(encoding="utf-8"))


def read_history(path: Path) -> dict[str, Any]:
    return json.loads((path / "history.json").read_text(encoding="utf-8"))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    missing, unexpected = load_model(model, path / WEIGHTS, strict=False)
    # save_pretrained stores the tied lm_head once, as the token embedding
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CorruptCheckpoint(f"{path.name}/{WEIGHTS} does not fit this model "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_state(path: Path, name: str) -> Any:
    return torch.load(path / f"{name}.pt", map_location="cpu", weights_only=True)


def steps(root: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint directory, ascending by step."""
    root = Path(root)
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _NAME.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def newest_valid(root: Path) -> Path | None:
    """The newest checkpoint that verifies. Corrupt newer ones are renamed *.corrupt, loudly."""
    for _, path in reversed(steps(root)):
        try:
            verify(path)
            return path
        except CorruptCheckpoint as exc:
            aside = _free_name(path.with_name(path.name + ".corrupt"))
            path.rename(aside)
            print(f"WARNING: checkpoint {path} is corrupt: {exc}. Moved it to {aside} "
                  "(delete it once you have looked) and trying the one before.", file=sys.stderr)
    return None


def remove_staging_leftovers(root: Path) -> None:
    """Hidden staging directories left by a killed save (see pipeline.atomic)."""
    root = Path(root)
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(".step-") and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def prune_and_index(root: Path, keep_last: int) -> dict[str, Any]:
    """Keep the newest `keep_last` checkpoints and the best by val loss; write manifest.json."""
    entries = []
    for step, path in steps(root):
        meta = read_meta(path)
        entries.append({"step": step, "dir": path.name, "tokens": meta["tokens"], "val_loss": meta["val_loss"]})
    scored = [e for e in entries if e["val_loss"] is not None]
    best = min(scored, key=lambda e: (e["val_loss"], e["step"]))["dir"] if scored else None
    keep = {e["dir"] for e in entries[-keep_last:]} | {best}
    for entry in entries:
        if entry["dir"] not in keep:
            shutil.rmtree(Path(root) / entry["dir"])
    kept = [e for e in entries if e["dir"] in keep]
    manifest = {"checkpoints": kept, "best": best, "latest": kept[-1]["dir"] if kept else None}
    write_json(Path(root) / "manifest.json", manifest)
    return manifest


def archive(root: Path, why: str) -> Path:
    """Move every checkpoint and the manifest into root/previous-runs/run-N/: a run with other
    params starts afresh without losing what an earlier run paid for."""
    root = Path(root)
    target = _free_name(root / "previous-runs" / "run-1")
    target.mkdir(parents=True)
    for _, path in steps(root):
        path.rename(target / path.name)
    if (root / "manifest.json").is_file():
        (root / "manifest.json").rename(target / "manifest.json")
    (target / "WHY.txt").write_text(why + "\n", encoding="utf-8")
    return target


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.{n}"), n + 1
    return candidate
