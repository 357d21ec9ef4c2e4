"""What happens to checkpoints across saves and runs: the newest good one is found, damaged ones are
quarantined, old ones pruned (keep the newest K and the best), another run's archived, and what a
killed run left behind tidied.

Nothing kept is lost and nothing wedges the next run:
- pruning renames a directory to a hidden .trash-* name before deleting it; archiving is
  journalled in .archiving.json and finished by the next run. A kill at any moment leaves only
  hidden leftovers, which `clean_leftovers` removes (or, for a journalled archive, completes);
- a step-N/ directory that is incomplete, foreign or damaged is moved to step-N.corrupt/ with one
  warning line (`quarantine`), and `quarantined` lists those for the train report.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from pipeline.core.atomic import write_json, write_text
from pipeline.core.errors import PipelineError
from pipeline.engine.checkpoint import space
from pipeline.engine.checkpoint.store import (MANIFEST, PREVIOUS_RUNS, WHY, CorruptCheckpoint, check_complete,
                                              how_to_free, quarantined_dirs, read_json, read_meta, steps, verify)

ARCHIVING = ".archiving.json"
# what pipeline.core.atomic leaves when killed: .NAME.tmp-PID (a staging copy) or .NAME.old-PID
# (the previous version, moved aside for a moment while its replacement is renamed in)
_STAGED = re.compile(r"^\.(?P<final>.+)\.(?P<tag>tmp|old)-\d+$")
_TRASH_PREFIX = ".trash-"


# ---- the newest good checkpoint, and quarantine

def newest_valid(root: Path) -> Path | None:
    """The newest checkpoint that verifies, or None.

    Every step-N/ that is incomplete (see `check_complete`) and every newer one that fails
    `verify` is quarantined on the way (see `quarantine`: one warning line each), so what is
    left in root is clean. Call `quarantined(root)` for the list to report.
    """
    for _, path in reversed(complete_steps(root)):
        try:
            verify(path)
            return path
        except CorruptCheckpoint as exc:
            quarantine(path, str(exc))
    return None


def complete_steps(root: Path) -> list[tuple[int, Path]]:
    """`steps(root)` without the directories that fail `check_complete`: those are quarantined."""
    kept = []
    for step, path in steps(root):
        try:
            check_complete(path)
            kept.append((step, path))
        except CorruptCheckpoint as exc:
            quarantine(path, str(exc))
    return kept


def quarantine(path: Path, why: str) -> Path:
    """Move a damaged checkpoint directory to step-N.corrupt/ (or .corrupt.1, ...), note `why`
    in its WHY.txt, print one warning line to stderr, and return the new path.

    The directory is kept, not deleted: it may be all that is left of a run worth a look.
    Raises PipelineError if it cannot be moved.
    """
    path = Path(path)
    aside = _free_name(path.with_name(path.name + ".corrupt"))
    try:
        path.rename(aside)
    except OSError as exc:
        raise PipelineError(f"checkpoint {path} is corrupt ({why}) and could not be moved aside "
                            f"({exc.strerror}): move or delete it by hand and rerun") from None
    try:
        (aside / WHY).write_text(why + "\n", encoding="utf-8")
    except OSError:
        pass  # a full disk must not hide the warning below; the reason is in it too
    print(f"WARNING: checkpoint {path} is corrupt: {why}; moved it to {aside} (look, then delete it)",
          file=sys.stderr)
    return aside


def quarantined(root: Path) -> list[str]:
    """One line per quarantined directory in root, by name, for the train report and terminal:
    "step-000010.corrupt: step-000010/model.safetensors does not match its sha256 (...)"
    (just the name when its WHY.txt is gone). Empty when there are none."""
    return [f"{c.name}: {why}" if (why := _why(c)) else c.name for c in quarantined_dirs(root)]


def _why(path: Path) -> str | None:
    try:
        return (path / WHY).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


# ---- prune and index

def prune_and_index(root: Path, keep_last: int) -> dict[str, Any]:
    """Keep the newest `keep_last` checkpoints and the best by val loss; write manifest.json.

    Directories that fail `check_complete` are quarantined (never a crash). A pruned directory
    is renamed to a hidden name before it is deleted, so a kill mid-delete leaves nothing that
    looks like a checkpoint.
    """
    root = Path(root)
    entries = []
    for step, path in complete_steps(root):
        meta = read_meta(path)
        entries.append({"step": step, "dir": path.name, "tokens": meta["tokens"], "val_loss": meta["val_loss"]})
    keep, best = kept_dirs(entries, keep_last)
    for entry in entries:
        if entry["dir"] not in keep:
            _delete(root / entry["dir"])
    kept = [e for e in entries if e["dir"] in keep]
    manifest = {"checkpoints": kept, "best": best, "latest": kept[-1]["dir"] if kept else None}
    with space.full_disk_is_an_error(root, space.SPACE_MARGIN_BYTES, MANIFEST, lambda: how_to_free(root)):
        write_json(root / MANIFEST, manifest)
    return manifest


def kept_dirs(entries: list[dict[str, Any]], keep_last: int) -> tuple[set[str], str | None]:
    """The rule, wherever checkpoints are kept (here, and a remote copy): of `entries` ({"step",
    "dir", "val_loss"}, ascending by step), the newest `keep_last` and the best by val loss; also
    the best's dir (None when none has a val loss)."""
    scored = [e for e in entries if e["val_loss"] is not None]
    best = min(scored, key=lambda e: (e["val_loss"], e["step"]))["dir"] if scored else None
    return {e["dir"] for e in entries[-keep_last:]} | ({best} if best else set()), best


def read_index(root: Path) -> dict[str, Any] | None:
    """manifest.json as `prune_and_index` wrote it ({"checkpoints": [{"step", "dir", "tokens",
    "val_loss"}, ...], "best": dir or None, "latest": dir or None}), or None when there is none.
    PipelineError (one line naming the file) when it is damaged."""
    file = Path(root) / MANIFEST
    if not file.is_file():
        return None
    try:
        index = read_json(file, str(file))
    except CorruptCheckpoint as exc:
        raise PipelineError(f"{exc}: rerun the train stage, which rewrites it from the checkpoints") from None
    if not isinstance(index, dict) or not isinstance(index.get("checkpoints"), list):
        raise PipelineError(f"{file} lists no checkpoints: rerun the train stage, which rewrites it")
    return index


def best_entry(root: Path) -> dict[str, Any] | None:
    """The manifest entry of the checkpoint with the lowest val loss, or None (no manifest, or no
    checkpoint with a val loss)."""
    index = read_index(root)
    if not index or not index.get("best"):
        return None
    return next((e for e in index["checkpoints"] if e.get("dir") == index["best"]), None)


def _delete(path: Path) -> None:
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{os.getpid()}")
    path.rename(trash)  # one atomic step: from here on no scanner sees a half-deleted checkpoint
    shutil.rmtree(trash)


# ---- another run's checkpoints

def archive(root: Path, why: str) -> Path:
    """Move every checkpoint and the manifest into root/previous-runs/run-N/ (WHY.txt says why):
    a run with other params starts afresh without losing what an earlier run paid for.

    The move is journalled in root/.archiving.json first; if it is killed half-way,
    `clean_leftovers` finishes it, so the two runs' checkpoints never mix. Returns run-N/.
    """
    root = Path(root)
    target = _free_name(root / PREVIOUS_RUNS / "run-1")
    write_json(root / ARCHIVING, {"into": str(target.relative_to(root)), "why": why})
    return _finish_archive(root)


def _finish_archive(root: Path) -> Path:
    journal = root / ARCHIVING
    plan = _read_archive_plan(journal)
    target = root / plan["into"]
    target.mkdir(parents=True, exist_ok=True)
    write_text(target / WHY, plan["why"] + "\n")
    for _, path in steps(root):
        path.rename(target / path.name)
    if (root / MANIFEST).is_file():
        (root / MANIFEST).rename(target / MANIFEST)
    journal.unlink()
    return target


def _read_archive_plan(journal: Path) -> dict[str, str]:
    try:
        plan = read_json(journal, str(journal))
        if isinstance(plan, dict) and isinstance(plan.get("into"), str) and isinstance(plan.get("why"), str):
            return plan
        problem = f"{journal} lacks into/why"
    except CorruptCheckpoint as exc:
        problem = str(exc)
    raise PipelineError(f"{problem}: delete it and rerun (the checkpoints it was moving stay where they are)")


# ---- what a killed run left

def clean_leftovers(root: Path) -> None:
    """Tidy what a killed run left in root: finish a journalled archive, put back a checkpoint
    that was moved aside for a same-step replacement which never landed, and delete staging
    copies and half-deleted .trash-* directories.

    Call it only while holding the RunLock: a live run's staging copy looks just the same.
    """
    root = Path(root)
    if not root.is_dir():
        return
    if (root / ARCHIVING).is_file():
        _finish_archive(root)
    for child in sorted(root.iterdir()):
        staged = _STAGED.match(child.name)
        if staged and staged["tag"] == "old" and not (root / staged["final"]).exists():
            child.rename(root / staged["final"])  # the only copy left: keep it
        elif staged or child.name.startswith(_TRASH_PREFIX):
            _remove(child)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.{n}"), n + 1
    return candidate
