"""Versioned, atomic, checksummed checkpoints: checkpoints/step-NNNNNN/ and checkpoints/manifest.json.

The parts, each with its own tests:
  store      one checkpoint: its files and SHA256SUMS, atomic save, verify, read back, list steps
  space      disk space: a save the disk cannot hold is refused first; a full disk is one error
  lifecycle  across saves and runs: newest valid, quarantine, prune + index, archive, leftovers
  lock       RunLock: one training run per checkpoints directory
  remote     RemoteCheckpoints: the copy at paths.checkpoints_remote (background upload, verified download)
  lease      RemoteLease: one live run per remote prefix (conditional create + heartbeat)
  manager    CheckpointManager: what the trainer calls (save, resume, another run moved aside,
             under DDP); imported from its module, as it needs accelerate and the rest does not

The names below are the API the evaluate stage, the doctor and the tests use, whichever part
holds them.
"""
from pipeline.engine.checkpoint.space import SPACE_MARGIN_BYTES, SPACE_MARGIN_FRACTION, disk_bytes, free_bytes, human_bytes
from pipeline.engine.checkpoint.store import (MANIFEST, SUMS, CorruptCheckpoint, expected_size, load_state, load_weights,
                                              payload_bytes, read_history, read_meta, save, steps, verify)
from pipeline.engine.checkpoint.lifecycle import (ARCHIVING, archive, best_entry, clean_leftovers, newest_valid,
                                                  prune_and_index, quarantined, read_index)
from pipeline.engine.checkpoint.lock import LOCK, RunLock

__all__ = ["ARCHIVING", "LOCK", "MANIFEST", "SPACE_MARGIN_BYTES", "SPACE_MARGIN_FRACTION", "SUMS", "CorruptCheckpoint",
           "RunLock", "archive", "best_entry", "clean_leftovers", "disk_bytes", "expected_size", "free_bytes",
           "human_bytes", "load_state", "load_weights", "newest_valid", "payload_bytes", "prune_and_index",
           "quarantined", "read_history", "read_index", "read_meta", "save", "steps", "verify"]
