"""One live training run per remote checkpoint prefix: `RemoteLease`, an object PREFIX/.lease that
its holder rewrites every few seconds (a heartbeat).

Why a lease with a heartbeat and not a lock: the machine that holds it may be a spot VM that is
reclaimed with no chance to release anything, and the job recovered on a new VM must then get in
without a person deleting a file. A lock that is never released would wedge it; a lease that stops
being renewed expires.

- Taking it is a conditional create (`open(path, "xb")`; s3fs sends S3's `If-None-Match: *`, so of
  two runs that race, exactly one create succeeds: https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html).
- A lease that exists is judged by watching it, never by comparing two machines' clocks: when its
  heartbeat stays the same for `seconds` of this machine's time, its holder is dead and the lease
  is taken over; when it changes, a live run holds the prefix and this one is refused (exit 2).
  A lease whose recorded heartbeat is already older than that is taken over at once.
- On S3 the takeover and every heartbeat are conditional on the ETag read (`If-Match`), so two
  recovered jobs cannot both take it, and a holder that was taken over (it stalled for longer than
  `seconds`) finds out at its next heartbeat instead of overwriting its successor. Elsewhere
  (gs://, az://, file://) the takeover is delete-then-create: a race of two recoveries is caught
  one heartbeat later, when the loser finds another holder's id in the lease.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from pipeline.core.errors import PipelineError

LEASE = ".lease"
BEATS_PER_LEASE = 4     # heartbeats per lease period: three may be late before the lease lapses


class RemoteLease:
    """`with RemoteLease(fs, prefix, url, seconds): ...`; `lost` is a message once another run
    took the lease over (the holder stalled for longer than `seconds`), else None."""

    def __init__(self, fs: Any, prefix: str, url: str, seconds: float):
        self.fs, self.path, self.url, self.seconds = fs, f"{prefix}/{LEASE}", url, seconds
        self.holder = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": _now_iso(), "lease_seconds": seconds}
        self.lost: str | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RemoteLease:
        if not self._create():
            self._take_over()
        self._thread = threading.Thread(target=self._beat, name="checkpoint-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.lost is None and (self._read() or {}).get("id") == self.holder["id"]:
            self.fs.rm_file(self.path)

    # ---- taking it
    def _create(self) -> bool:
        """The conditional create: True when this run now holds the lease, False when one exists."""
        try:
            if _is_s3(self.fs):
                self._etag = self.fs.pipe_file(self.path, self._record(), mode="create")["ETag"]
            else:
                with self.fs.open(self.path, "xb") as out:
                    out.write(self._record())
        except FileExistsError:
            return False
        return True

    def _take_over(self) -> None:
        """A lease exists: take it if its holder is dead (its heartbeat stood still for
        `seconds`), refuse this run if it is alive."""
        etag = self._current_etag()   # before the content: if it changes in between, If-Match fails
        seen = self._read()
        if seen is None:    # released between our create and our read
            if self._create():
                return
            raise PipelineError(self._refusal(self._read() or {}))
        if time.time() - float(seen.get("heartbeat", 0)) < self.seconds:
            print(f"{self.url}: a lease from host {seen.get('host')} (PID {seen.get('pid')}) exists; waiting up to "
                  f"{self.seconds:g} s for its heartbeat (a reclaimed VM's lease lapses)", file=sys.stderr, flush=True)
            deadline = time.monotonic() + self.seconds
            while time.monotonic() < deadline:
                time.sleep(min(self.seconds / BEATS_PER_LEASE, max(0.0, deadline - time.monotonic())))
                now = self._read()
                if now is None or now.get("heartbeat") != seen.get("heartbeat") or now.get("id") != seen.get("id"):
                    raise PipelineError(self._refusal(now or seen))
        if not self._replace(etag):
            raise PipelineError(self._refusal(self._read() or seen))
        print(f"{self.url}: took over the lease of host {seen.get('host')} (PID {seen.get('pid')}), whose "
              f"heartbeat stopped", file=sys.stderr, flush=True)

    def _replace(self, etag: str | None) -> bool:
        """Write our record over the lease last read (its ETag), or report that it changed meanwhile."""
        if etag is not None and _is_s3(self.fs):
            try:
                self._etag = self.fs.pipe_file(self.path, self._record(), IfMatch=etag)["ETag"]
            except OSError:     # 412 Precondition Failed: another run wrote it since we read it
                return False
            return True
        self.fs.rm_file(self.path)
        return self._create()

    def _refusal(self, holder: dict[str, Any]) -> str:
        return (f"paths.checkpoints_remote {self.url} is in use by another live training run (host "
                f"{holder.get('host')}, PID {holder.get('pid')}, started {holder.get('started')}; its lease "
                f"{self.path} is renewed every few seconds). Wait for it to finish, stop it, or point "
                "paths.checkpoints_remote at another prefix")

    # ---- keeping it
    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / BEATS_PER_LEASE):
            try:
                self._renew()
            except Exception as exc:  # a network blip: the next beat tries again; the lease lasts 4 beats
                print(f"WARNING: could not renew the lease {self.path} ({type(exc).__name__}: {exc})",
                      file=sys.stderr, flush=True)
            if self.lost:
                return

    def _renew(self) -> None:
        now = self._read()
        if now is None or now.get("id") != self.holder["id"]:
            self._lost(now)
        elif not self._replace_own():
            self._lost(self._read())

    def _replace_own(self) -> bool:
        if self._etag is not None and _is_s3(self.fs):
            return self._replace(self._etag)
        self.fs.pipe_file(self.path, self._record())
        return True

    def _lost(self, holder: dict[str, Any] | None) -> None:
        who = f"host {holder.get('host')}, PID {holder.get('pid')}" if holder else "nobody (it was deleted)"
        self.lost = (f"the lease {self.path} on paths.checkpoints_remote now names {who}: this run stalled "
                     f"longer than {self.seconds:g} s and another took over; stop this one")

    # ---- the object
    def _record(self) -> bytes:
        return json.dumps({**self.holder, "heartbeat": time.time(), "renewed": _now_iso()}).encode()

    def _read(self) -> dict[str, Any] | None:
        self.fs.invalidate_cache(self.path)
        try:
            record = json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # damaged: judged by watching it like any other
        return record if isinstance(record, dict) else {}

    def _current_etag(self) -> str | None:
        self.fs.invalidate_cache(self.path)
        try:
            return self.fs.info(self.path).get("ETag")
        except FileNotFoundError:
            return None


def _is_s3(fs: Any) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"s3", "s3a"} & set(protocols))


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
