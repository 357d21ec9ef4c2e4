"""The trainer's checkpoints, under DDP: one run per directory (RunLock), resume, save, the weights
to ship.

Rank 0 alone takes the lock, writes, prunes and indexes, and decides what to resume from: it tidies
what a killed run left, quarantines damaged checkpoints, and moves another run's checkpoints
aside (a run's identity, pipeline/engine/identity.py, is in every meta.json); then every rank
loads the same checkpoint. With a remote copy (remote.py, paths.checkpoints_remote) rank 0 also
takes its lease, resumes from it when it holds a newer checkpoint than this disk, hands it every
checkpoint written, and waits for the last upload before the run ends, however it ends.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from pipeline.core.errors import PipelineError
from pipeline.engine.checkpoint.lifecycle import (archive, best_entry, clean_leftovers, newest_valid, prune_and_index,
                                                  quarantined, read_index)
from pipeline.engine.checkpoint.lock import RunLock
from pipeline.engine.checkpoint.remote import RemoteCheckpoints
from pipeline.engine.checkpoint.store import (PREVIOUS_RUNS, dirname, load_state, load_weights, read_history,
                                              read_meta, save, steps)
from pipeline.engine.identity import differences
from pipeline.engine.progress import Progress
from pipeline.engine.training import Training


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int, accelerator: Accelerator, identity: dict[str, Any],
                 run: dict[str, Any], remote: RemoteCheckpoints | None = None):
        """`identity`: what makes this run this run; `run`: what else every meta.json records of it;
        `remote`: the copy off this machine, used by rank 0 only."""
        self.root, self.keep_last, self.acc = Path(root), keep_last, accelerator
        self.identity, self.run = identity, run
        self.remote = remote if accelerator.is_main_process else None
        self.quarantined: list[str] = []    # this directory's step-N.corrupt/ lines, for the report
        self.resumed_from: str | None = None
        self.last_saved_step = -1

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One run per checkpoints directory: rank 0 holds the lock and tells the others whether it got it."""
        lock = RunLock(self.root) if self.acc.is_main_process else nullcontext()
        refused: list[str | None] = [None]
        try:
            lock.__enter__()
            if self.remote:
                self._open_remote(lock)
        except PipelineError as exc:
            refused = [str(exc)]
        if self.acc.num_processes > 1:
            broadcast_object_list(refused)
        if refused[0]:
            raise PipelineError(refused[0])
        try:
            yield
        except BaseException:
            self._close_remote(quietly=True)   # the error in flight is the one to report
            raise
        else:
            self._close_remote(quietly=False)
        finally:
            lock.__exit__(None, None, None)

    def _open_remote(self, lock: Any) -> None:
        try:
            self.remote.open(self.identity)
        except BaseException:
            lock.__exit__(None, None, None)
            raise

    def _close_remote(self, quietly: bool) -> None:
        """Wait for the last upload (the checkpoint of a SIGTERM, or the final one), give the lease back."""
        if not self.remote:
            return
        try:
            self.remote.close()
        except PipelineError as exc:
            if not quietly:
                raise
            print(f"WARNING: {exc}", file=sys.stderr)

    def resume(self, training: Training) -> Progress | None:
        """Load this run's newest valid checkpoint into `training` and return its progress; None to
        start afresh."""
        found: list[str | None] = [None]
        if self.acc.is_main_process:
            found = [self._newest_of_this_run()]
        if self.acc.num_processes > 1:
            broadcast_object_list(found)
        if found[0] is None:
            return None
        path = Path(found[0])
        load_weights(training.raw, path)
        training.optimizer.load_state_dict(load_state(path, "optimizer"))
        training.scheduler.load_state_dict(load_state(path, "scheduler"))
        if training.scaler.is_enabled() and (path / "scaler.pt").is_file():
            training.scaler.load_state_dict(load_state(path, "scaler"))
        progress = Progress.resumed(read_meta(path), read_history(path))
        self.resumed_from, self.last_saved_step = path.name, progress.step
        return progress

    def _newest_of_this_run(self) -> str | None:
        clean_leftovers(self.root)
        path = newest_valid(self.root)
        if path and (diff := differences(read_meta(path)["identity"], self.identity)):
            # another run's checkpoints (a changed lr, model or corpus): keep them, start afresh
            aside = archive(self.root, f"{path.name} came from a different run: {diff}")
            print(f"WARNING: {path} comes from a different run ({diff}): moved the old checkpoints "
                  f"to {aside} (delete it when you no longer need it) and starting afresh", file=sys.stderr)
            path = None
        path = self._newer_from_remote(path) or path
        if path:
            prune_and_index(self.root, self.keep_last)  # drop what was moved aside
        self.quarantined = quarantined(self.root)
        return str(path) if path else None

    def _newer_from_remote(self, local: Path | None) -> Path | None:
        """The remote's newest checkpoint that is newer than `local` and verifies, now on this disk."""
        if not self.remote:
            return None
        local_step = read_meta(local)["step"] if local else -1
        for step in self.remote.newest_after(local_step):
            if fetched := self.remote.download(step, self.root):
                why = f"newer than this disk's {local.name}" if local else "this disk has no checkpoint of this run"
                print(f"fetched {fetched.name} from {self.remote.url} ({why})", file=sys.stderr)
                return fetched
        return None

    def save(self, training: Training, progress: Progress, meta: dict[str, Any]) -> None:
        """Checkpoint this step (rank 0 writes; every rank waits for it), then prune to keep_last + the best."""
        if self.acc.is_main_process:
            states = {"optimizer": training.optimizer.state_dict(), "scheduler": training.scheduler.state_dict()}
            if training.scaler.is_enabled():
                states["scaler"] = training.scaler.state_dict()
            path = save(self.root, progress.step, training.raw, states,
                        {**meta, "identity": self.identity, **self.run}, progress.history)
            prune_and_index(self.root, self.keep_last)
            if self.remote:
                self.remote.upload(path)   # in the background
            self.quarantined = quarantined(self.root)
        self.acc.wait_for_everyone()
        self.last_saved_step = progress.step

    def final_weights(self, reason: str, step: int, training: Training) -> str | None:
        """The checkpoint models/final ships: after early stopping the best one (loaded into
        `training`), not the weights that stopped improving; otherwise the last, already loaded."""
        best = best_entry(self.root)
        if reason != "early_stopping" or best is None or best["step"] == step:
            return dirname(step)
        load_weights(training.raw, self.root / best["dir"])
        return f"{best['dir']} (best)"

    def path(self, step: int) -> Path:
        return self.root / dirname(step)

    def newest_kept(self) -> Path | None:
        kept = steps(self.root)
        return kept[-1][1] if kept else None

    @property
    def previous_runs(self) -> Path:
        return self.root / PREVIOUS_RUNS

    def index(self) -> dict[str, Any] | None:
        return read_index(self.root)
