"""A copy of the checkpoints directory at an fsspec URL (`paths.checkpoints_remote`), which outlives
the machine: a spot VM is reclaimed with its disk, and the job recovered on a new VM resumes from
the bucket.

- Each checkpoint written locally (atomic and checksummed, store.py) is uploaded by a background
  thread, so training does not wait: its files first and SHA256SUMS, the commit marker, last. A
  step whose marker is absent is incomplete, so a half-uploaded step is never taken for a
  checkpoint. A newer checkpoint waiting replaces an older one not yet started: on a slow link
  the bucket gets the newest, not a backlog.
- Old checkpoints are pruned there by the rule the local directory keeps (lifecycle.kept_dirs:
  the newest train.keep_last and the best), marker first.
- `drain` waits for the upload in flight: the manager calls it before the process exits (the
  checkpoint written on SIGTERM, AWS's 2-minute notice, and the final one).
- `newest_after` / `download`: a newer complete checkpoint of this run is fetched into a staging
  directory, verified against its SHA256SUMS and renamed into place; a damaged one is skipped with
  one warning line.
- A prefix holding another run's checkpoints (identity in meta.json) is refused, not moved aside:
  object stores have no rename, so moving a run is a copy and a delete of every object, neither
  atomic nor free, on a machine paid by the hour; the message says what to do.
- One live run per prefix: lease.py.
Credentials and endpoints come from each library's own environment (AWS_ENDPOINT_URL, AWS_PROFILE,
GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_CONNECTION_STRING, ...). Every failure to reach the
remote at start is one PipelineError (exit 2), before any step is paid for.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.engine.checkpoint.lease import LEASE, RemoteLease
from pipeline.engine.checkpoint.lifecycle import kept_dirs
from pipeline.engine.checkpoint.store import SUMS, CorruptCheckpoint, dirname, read_meta, verify
from pipeline.engine.identity import differences


class RemoteCheckpoints:
    def __init__(self, url: str, keep_last: int, lease_seconds: float):
        self.url, self.keep_last, self.lease_seconds = url, keep_last, lease_seconds
        self.fs, self.prefix = _connect(url)
        self.lease: RemoteLease | None = None
        self.entries: dict[str, dict[str, Any]] = {}     # the remote's complete steps: dir -> index entry
        self.uploads: list[dict[str, float]] = []        # per checkpoint: bytes, seconds
        self.failed: str | None = None
        self._pending: Path | None = None
        self._busy = False
        self._done = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # ---- start and end
    def open(self, identity: dict[str, Any]) -> None:
        """Reach the remote, take its lease, list its checkpoints; refuse another run's prefix."""
        try:
            if "file" in _protocols(self.fs):   # a bucket is never created here; a directory is
                self.fs.makedirs(self.prefix, exist_ok=True)
            self.lease = RemoteLease(self.fs, self.prefix, self.url, self.lease_seconds).__enter__()
            self.entries = {e["dir"]: e for e in self._list()}
        except PipelineError:
            raise
        except Exception as exc:  # botocore, gcsfs, adlfs, aiohttp: each its own error types
            raise PipelineError(f"paths.checkpoints_remote {self.url} cannot be used ({_first_line(exc)}): check "
                                "that the bucket exists and the credentials and endpoint are set (AWS_PROFILE or "
                                "AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, AZURE_*)") from None
        try:
            self._refuse_another_run(identity)
        except PipelineError:
            self.lease.__exit__(None, None, None)
            raise
        self._thread = threading.Thread(target=self._upload_loop, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish the upload in flight, stop the uploader, give the lease back."""
        try:
            self.drain()
            if self.uploads:   # what train.checkpoint_every is weighed against: an upload's time
                last = self.uploads[-1]
                print(f"uploaded {len(self.uploads)} checkpoint(s) to {self.url}; the last, step {last['step']}: "
                      f"{last['bytes'] / 1e6:.1f} MB in {last['seconds']:.1f} s", file=sys.stderr)
        finally:
            with self._done:
                self._stop = True
                self._done.notify_all()
            if self._thread:
                self._thread.join()
            if self.lease:
                self.lease.__exit__(None, None, None)

    def _refuse_another_run(self, identity: dict[str, Any]) -> None:
        if not self.entries:
            return
        newest = max(self.entries.values(), key=lambda e: e["step"])
        if diff := differences(newest["identity"] or {}, identity):
            raise PipelineError(f"paths.checkpoints_remote {self.url} holds another run's checkpoints ({newest['dir']}: "
                                f"{diff}); they are never overwritten: point paths.checkpoints_remote at a new "
                                "prefix, or delete that one if you no longer need it")

    # ---- download
    def newest_after(self, step: int) -> list[int]:
        """The remote's complete steps newer than `step`, newest first."""
        return sorted((e["step"] for e in self.entries.values() if e["step"] > step), reverse=True)

    def download(self, step: int, root: Path) -> Path | None:
        """Fetch step-N into root: staged, verified, renamed into place; None (one warning line) when
        the remote copy does not verify."""
        name = dirname(step)
        stage = Path(root) / f".{name}.tmp-{os.getpid()}"   # lifecycle.clean_leftovers removes it if killed
        stage.mkdir(parents=True)
        try:
            for remote_file in self.fs.ls(f"{self.prefix}/{name}", detail=False):
                self.fs.get_file(remote_file, str(stage / remote_file.rsplit("/", 1)[1]))
            verify(stage)
        except CorruptCheckpoint as exc:
            print(f"WARNING: {self.url}/{name} is damaged ({exc}); not resuming from it", file=sys.stderr)
            _remove_tree(stage)
            return None
        except BaseException:
            _remove_tree(stage)
            raise
        final = Path(root) / name
        stage.rename(final)
        return final

    # ---- upload
    def upload(self, path: Path) -> None:
        """Queue checkpoint `path` (a step-N/ directory) for upload; returns at once."""
        if self.lease and self.lease.lost:
            raise PipelineError(self.lease.lost)
        snapshot = _snapshot(Path(path))
        with self._done:
            if self._pending is not None:
                _remove_tree(self._pending)   # superseded before it started
            self._pending = snapshot
            self._done.notify_all()

    def drain(self) -> None:
        """Wait until the queued checkpoint is in the remote; PipelineError if its upload failed."""
        with self._done:
            self._done.wait_for(lambda: (self._pending is None and not self._busy) or self._thread is None
                                or not self._thread.is_alive())
        if self.failed:
            raise PipelineError(self.failed)

    def _upload_loop(self) -> None:
        while True:
            with self._done:
                self._done.wait_for(lambda: self._pending is not None or self._stop)
                if self._pending is None:
                    return
                snapshot, self._pending, self._busy = self._pending, None, True
            try:
                self._upload(snapshot)
                self.failed = None
            except Exception as exc:  # the next checkpoint tries again; drain() reports the last failure
                self.failed = (f"could not upload checkpoint {snapshot.name.split('.')[1]} to paths.checkpoints_remote "
                               f"{self.url} ({_first_line(exc)}); the local copy is intact: rerun to retry")
                print(f"WARNING: {self.failed}", file=sys.stderr, flush=True)
            finally:
                _remove_tree(snapshot)
                with self._done:
                    self._busy = False
                    self._done.notify_all()

    def _upload(self, snapshot: Path) -> None:
        started, name = time.monotonic(), snapshot.name.split(".")[1]
        target = f"{self.prefix}/{name}"
        if self.fs.exists(f"{target}/{SUMS}"):   # a same-step rewrite: incomplete until its marker is back
            self.fs.rm_file(f"{target}/{SUMS}")
        files = sorted(snapshot.iterdir(), key=lambda f: f.name == SUMS)   # the marker last
        if "file" in _protocols(self.fs):   # a local put_file (file://, an NFS mount) makes no folder
            self.fs.makedirs(target, exist_ok=True)
        for file in files:
            self.fs.put_file(str(file), f"{target}/{file.name}")
        meta = read_meta(snapshot)
        self.entries[name] = {"step": meta["step"], "dir": name, "val_loss": meta["val_loss"],
                              "identity": meta.get("identity")}
        self.uploads.append({"step": meta["step"], "bytes": sum(f.stat().st_size for f in files),
                             "seconds": time.monotonic() - started})
        self._prune()

    def _prune(self) -> None:
        ordered = sorted(self.entries.values(), key=lambda e: e["step"])
        keep, _ = kept_dirs(ordered, self.keep_last)
        for entry in ordered:
            if entry["dir"] not in keep:
                self.fs.rm_file(f"{self.prefix}/{entry['dir']}/{SUMS}")   # incomplete from this moment
                self.fs.rm(f"{self.prefix}/{entry['dir']}", recursive=True)
                del self.entries[entry["dir"]]

    # ---- listing
    def _list(self) -> list[dict[str, Any]]:
        """Index entries of the remote's complete checkpoints (SHA256SUMS present), ascending."""
        self.fs.invalidate_cache(self.prefix)
        found = []
        try:
            children = self.fs.ls(self.prefix, detail=False)
        except FileNotFoundError:   # an empty prefix
            children = []
        for child in children:
            name = child.rstrip("/").rsplit("/", 1)[1]
            if name == LEASE or not name.startswith("step-") or not self.fs.exists(f"{child}/{SUMS}"):
                continue
            meta = _remote_meta(self.fs, child)
            if meta is not None:
                found.append({"step": meta["step"], "dir": name, "val_loss": meta.get("val_loss"),
                              "identity": meta.get("identity")})
        return sorted(found, key=lambda e: e["step"])


def _connect(url: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    try:
        fs, prefix = url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise PipelineError(f"paths.checkpoints_remote {url}: {_first_line(exc)}") from None
    return fs, prefix.rstrip("/")


def _protocols(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _remote_meta(fs: Any, directory: str) -> dict[str, Any] | None:
    try:
        meta = json.loads(fs.cat_file(f"{directory}/meta.json"))
    except (FileNotFoundError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("step"), int) else None


def _snapshot(path: Path) -> Path:
    """Hard links to a checkpoint's files (it is never modified, only pruned, which removes just
    its own names): the upload reads them while training goes on and prunes."""
    snapshot = path.with_name(f".{path.name}.upload{time.monotonic_ns()}.tmp-{os.getpid()}")
    snapshot.mkdir()
    for file in path.iterdir():
        os.link(file, snapshot / file.name)
    return snapshot


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
