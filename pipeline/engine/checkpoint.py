"""Versioned, atomic, checksummed checkpoints: checkpoints/step-NNNNNN/ and checkpoints/manifest.json.

A checkpoint directory holds the weights in save_pretrained format (model.safetensors,
config.json), one torch file per training state (optimizer.pt, scheduler.pt, scaler.pt),
meta.json (step, tokens, val loss, data position, the params and plan used), history.json (the
loss curve so far) and SHA256SUMS over all of them (`sha256sum -c SHA256SUMS` checks it by hand).

Nothing kept is lost and nothing wedges the next run:
- a checkpoint is written beside its final name and renamed into place; pruning renames a
  directory to a hidden .trash-* name before deleting it; archiving is journalled in
  .archiving.json and finished by the next run. A kill at any moment leaves only hidden
  leftovers, which `clean_leftovers` removes (or, for a journalled archive, completes);
- a step-N/ directory that is incomplete, foreign or damaged is moved to step-N.corrupt/ with one
  warning line (`quarantine`), and `quarantined` lists those for the train report;
- `RunLock` keeps a second run off the same directory;
- `save` checks the free space first and turns a full disk into one PipelineError.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_model

from pipeline.core.atomic import staging_dir, write_json, write_text
from pipeline.core.errors import PipelineError
from pipeline.core.provenance import file_sha256

SUMS = "SHA256SUMS"
WEIGHTS = "model.safetensors"
REQUIRED_FILES = (WEIGHTS, "meta.json", "optimizer.pt")
REQUIRED_META = ("step", "tokens", "val_loss")
MANIFEST = "manifest.json"
LOCK = ".lock"
ARCHIVING = ".archiving.json"
WHY = "WHY.txt"
# Headroom over a checkpoint's size: manifest.json, its temporary copy and file-system overhead.
SPACE_MARGIN_BYTES = 1 << 20
SPACE_MARGIN_FRACTION = 0.05

_NAME = re.compile(r"^step-(\d{6,})$")
_QUARANTINED = re.compile(r"^step-\d{6,}\.corrupt(\.\d+)?$")
# what pipeline.core.atomic leaves when killed: .NAME.tmp-PID (a staging copy) or .NAME.old-PID
# (the previous version, moved aside for a moment while its replacement is renamed in)
_STAGED = re.compile(r"^\.(?P<final>.+)\.(?P<tag>tmp|old)-\d+$")
_TRASH_PREFIX = ".trash-"
# how torch and safetensors word a write that failed for lack of space
_FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_DISK_WORDS = ("no space left", "os error 28", "storagefull", "quota exceeded", "unexpected pos",
                    "file write failed")


class CorruptCheckpoint(PipelineError):
    """A checkpoint that fails verification; the message says which file and how, in one line."""


def dirname(step: int) -> str:
    return f"step-{step:06d}"


# ---- writing

def save(root: Path, step: int, model: torch.nn.Module, states: dict[str, Any], meta: dict[str, Any],
         history: dict[str, Any]) -> Path:
    """Write checkpoint `step` (replacing one of the same step) and return its directory.

    Raises PipelineError, before writing anything, when the disk lacks the room (see
    `ensure_space`), and also when a write fails for lack of space after all: the partial copy
    is removed and the checkpoints already kept are untouched.
    """
    root = Path(root)
    final = root / dirname(step)
    needed = expected_size(root, payload_bytes(model, states, meta, history))
    what = f"checkpoint {final.name}"
    ensure_space(root, needed, what)
    with _full_disk_is_an_error(root, needed, what):
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


# ---- reading and checking

def verify(path: Path) -> None:
    """Raise CorruptCheckpoint unless the checkpoint is complete (see `check_complete`), every
    file listed in SHA256SUMS matches its digest, and history.json (when listed) is valid JSON."""
    listed = check_complete(path)
    for name, digest in listed.items():
        if file_sha256(path / name) != digest:
            raise CorruptCheckpoint(f"{path.name}/{name} does not match its sha256 (truncated or altered)")
    if "history.json" in listed:
        _read_json(path / "history.json", f"{path.name}/history.json")


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
    history = _read_json(file, str(file))
    if not isinstance(history, dict):
        raise CorruptCheckpoint(f"{file} is not a JSON object")
    return history


def _checked_meta(path: Path, label: str) -> dict[str, Any]:
    meta = _read_json(Path(path) / "meta.json", label)
    if not isinstance(meta, dict):
        raise CorruptCheckpoint(f"{label} is not a JSON object")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise CorruptCheckpoint(f"{label} lacks {', '.join(missing)}")
    return meta


def _read_json(file: Path, label: str) -> Any:
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


# ---- resume, quarantine, prune, archive

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
    return [f"{c.name}: {why}" if (why := _why(c)) else c.name for c in _quarantined_dirs(root)]


def _quarantined_dirs(root: Path) -> list[Path]:
    root = Path(root)
    return sorted(c for c in root.iterdir() if _QUARANTINED.match(c.name) and c.is_dir()) if root.is_dir() else []


def _why(path: Path) -> str | None:
    try:
        return (path / WHY).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


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
    scored = [e for e in entries if e["val_loss"] is not None]
    best = min(scored, key=lambda e: (e["val_loss"], e["step"]))["dir"] if scored else None
    keep = {e["dir"] for e in entries[-keep_last:]} | {best}
    for entry in entries:
        if entry["dir"] not in keep:
            _delete(root / entry["dir"])
    kept = [e for e in entries if e["dir"] in keep]
    manifest = {"checkpoints": kept, "best": best, "latest": kept[-1]["dir"] if kept else None}
    with _full_disk_is_an_error(root, SPACE_MARGIN_BYTES, MANIFEST):
        write_json(root / MANIFEST, manifest)
    return manifest


def read_index(root: Path) -> dict[str, Any] | None:
    """manifest.json as `prune_and_index` wrote it ({"checkpoints": [{"step", "dir", "tokens",
    "val_loss"}, ...], "best": dir or None, "latest": dir or None}), or None when there is none.
    PipelineError (one line naming the file) when it is damaged."""
    file = Path(root) / MANIFEST
    if not file.is_file():
        return None
    try:
        index = _read_json(file, str(file))
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


def archive(root: Path, why: str) -> Path:
    """Move every checkpoint and the manifest into root/previous-runs/run-N/ (WHY.txt says why):
    a run with other params starts afresh without losing what an earlier run paid for.

    The move is journalled in root/.archiving.json first; if it is killed half-way,
    `clean_leftovers` finishes it, so the two runs' checkpoints never mix. Returns run-N/.
    """
    root = Path(root)
    target = _free_name(root / "previous-runs" / "run-1")
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
        plan = _read_json(journal, str(journal))
        if isinstance(plan, dict) and isinstance(plan.get("into"), str) and isinstance(plan.get("why"), str):
            return plan
        problem = f"{journal} lacks into/why"
    except CorruptCheckpoint as exc:
        problem = str(exc)
    raise PipelineError(f"{problem}: delete it and rerun (the checkpoints it was moving stay where they are)")


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


remove_staging_leftovers = clean_leftovers  # the earlier name, kept for existing callers


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


# ---- disk space

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
    return max(estimate, disk_bytes(found[-1][1])) if found else estimate


def disk_bytes(path: Path) -> int:
    """Space a file or directory tree takes on disk (allocated blocks, not apparent size)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(_allocated(p) for p in files)


def _allocated(file: Path) -> int:
    st = file.stat()
    return max(st.st_size, getattr(st, "st_blocks", 0) * 512)


def ensure_space(root: Path, needed_bytes: int, what: str = "a checkpoint") -> None:
    """Raise PipelineError unless the disk holding root (or its nearest existing parent) has
    `needed_bytes` free plus a margin (SPACE_MARGIN_BYTES + SPACE_MARGIN_FRACTION of it)."""
    free = free_bytes(root)
    margin = SPACE_MARGIN_BYTES + int(needed_bytes * SPACE_MARGIN_FRACTION)
    if free < needed_bytes + margin:
        raise PipelineError(f"not enough disk space for {what} in {root}: it needs about "
                            f"{human_bytes(needed_bytes)} plus {human_bytes(margin)} headroom but only "
                            f"{human_bytes(free)} is free there. {_how_to_free(root)}")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds path, or would hold it once created."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _how_to_free(root: Path) -> str:
    root = Path(root)
    removable = [root / "previous-runs"] + _quarantined_dirs(root)
    sized = [f"{p} ({human_bytes(disk_bytes(p))})" for p in removable if p.is_dir()]
    delete = f"delete {', '.join(sized)}, " if sized else ""
    return (f"To make room: lower train.keep_last, {delete}or point paths.checkpoints at a bigger disk; "
            "the checkpoints already kept are intact")


@contextmanager
def _full_disk_is_an_error(root: Path, needed_bytes: int, what: str) -> Iterator[None]:
    """Turn a write that failed for lack of space into one PipelineError; other errors pass."""
    try:
        yield
    except Exception as exc:
        if not _is_full_disk(exc):
            raise
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise PipelineError(f"could not write {what} in {root}: the disk filled up ({detail}); it needs about "
                            f"{human_bytes(needed_bytes)} and {human_bytes(free_bytes(root))} is free now. "
                            f"{_how_to_free(root)}") from exc


def _is_full_disk(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:  # the cause or context may hold the errno
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_DISK_ERRNOS:
            return True
        if any(word in str(exc).lower() for word in _FULL_DISK_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, as df -h and du -h print them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ---- one run per checkpoints directory

class RunLock:
    """`with RunLock(root): ...` keeps a second training run off the same checkpoints directory.

    It holds an exclusive fcntl.flock on root/.lock, which the kernel drops when the process
    dies however it dies, and writes the holder into the file as JSON ({"pid", "host",
    "started", "command"}) so that a refused run can name it. Entering raises PipelineError
    (exit code 2) at once, never waits, when:
    - another live process holds the lock (the message names its PID, host, start and command);
    - the file names a live process of this host that is not this one but holds no flock (a
      reused PID, or a run on a file system flock does not reach: the message says how to tell
      and how to remove the file);
    - the file names another host, whose processes cannot be checked from here (the message
      says so and how to remove it if that run is gone).
    A file left by a dead process of this host is taken over with one warning line on stderr.
    Leaving removes the file. Under torch DDP only rank 0 should take it.
    """

    def __init__(self, root: Path, command: str | None = None):
        self.root = Path(root)
        self.path = self.root / LOCK
        self.command = command if command is not None else shlex.join(sys.argv)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = self._open_locked()
        try:
            self._take_over(_read_holder(fd))
            _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(),
                               "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                               "command": self.command})
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):
            self.path.unlink()  # before closing: a run that opened it meanwhile sees it is gone
        os.close(self._fd)
        self._fd = None

    def _open_locked(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_flock(fd):
                holder = _read_holder(fd)
                os.close(fd)
                raise PipelineError(self._in_use_message(holder))
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # its holder removed it between our open and flock: lock the new one

    def _take_over(self, holder: dict[str, Any] | None) -> None:
        """The flock is ours; the file may still name a holder that flock could not see."""
        if not holder:
            return
        if holder.get("host") != socket.gethostname():
            raise PipelineError(self._other_host_message(holder))
        pid = holder.get("pid")
        if pid != os.getpid() and _alive(pid):
            raise PipelineError(self._unlocked_holder_message(holder))
        print(f"WARNING: {self.path} was left by PID {pid} on {holder.get('host')} (started "
              f"{holder.get('started')}), which is no longer running: taking it over", file=sys.stderr)

    def _in_use_message(self, holder: dict[str, Any] | None) -> str:
        if not holder:
            return (f"{self.root} is in use by another training run, which is starting and has not written "
                    f"{self.path} yet: wait for it to finish, or point paths.checkpoints elsewhere")
        pid, host = holder.get("pid"), holder.get("host")
        stop = f"stop it (kill {pid})" if host == socket.gethostname() else f"stop it on {host}"
        return (f"{self.root} is in use by another training run: PID {pid} on host {host}, started "
                f"{holder.get('started')}, command: {holder.get('command')}. Wait for it to finish, {stop}, "
                "or point paths.checkpoints elsewhere to train separately")

    def _unlocked_holder_message(self, holder: dict[str, Any]) -> str:
        # a live process that holds no flock on the file: most likely its id was reused, but a run
        # on a file system where flock does not reach would look the same, so do not guess
        return (f"{self.path} names PID {holder.get('pid')} on host {holder.get('host')} (started "
                f"{holder.get('started')}, command: {holder.get('command')}) as the training run using "
                f"{self.root}; that process is running but does not hold the lock. If it is that run, wait "
                f"for it to finish or point paths.checkpoints elsewhere; if not (process ids get reused), "
                f"delete {self.path} and rerun")

    def _other_host_message(self, holder: dict[str, Any]) -> str:
        return (f"{self.path} says a training run on host {holder.get('host')} holds {self.root} (PID "
                f"{holder.get('pid')}, started {holder.get('started')}, command: {holder.get('command')}); "
                f"a process on another host cannot be checked from {socket.gethostname()}. If that run is "
                f"still going, wait for it or point paths.checkpoints elsewhere; if it is gone, delete "
                f"{self.path} and rerun")


def _try_flock(fd: int) -> bool:
    """True when this fd now holds the lock, False when another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return True  # a file system without flock: the holder record alone decides
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, now = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The record in the lock file; None when empty or unreadable (being written, or garbage)."""
    try:
        holder = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    data = (json.dumps(holder) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _alive(pid: Any) -> bool:
    """Whether a process with this id runs on this host (a zombie has finished: not alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
