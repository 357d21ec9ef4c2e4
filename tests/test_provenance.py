"""What made an output: package versions, the git revision (dirty when tracked files changed)."""
from __future__ import annotations

import hashlib
import subprocess

from pipeline.core import provenance


def test_git_revision_says_dirty_only_for_tracked_changes(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run(git + ["add", "a.txt"], check=True)
    subprocess.run(git + ["commit", "-qm", "c"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance.git_revision(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("x")
    assert provenance.git_revision(tmp_path) == head
    (tmp_path / "a.txt").write_text("2")
    assert provenance.git_revision(tmp_path) == head + "-dirty"


def test_a_record_holds_params_versions_and_revision(tmp_path):
    block = provenance.record({"train": {"lr": 1}})
    assert block["params"] == {"train": {"lr": 1}} and block["versions"]["torch"].startswith("2.")
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 << 20))
    assert provenance.file_sha256(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
