"""A path a stage must write that it cannot: exit 2, one line naming the path, the params key and
what to do; no traceback, and nothing written elsewhere.

The path under a regular file (ENOTDIR) fails for root too; a read-only directory is a chmod for a
user and a read-only tmpfs mount for root (root writes through permissions).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from mountkit import tmpfs
from trainkit import DEMO_FILES, cli, run_cli, tiny_sets

RUN = ("train.max_steps=2", "train.eval_every=2", "train.checkpoint_every=2")


def _one_line_error(done, *words: str) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write"), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_checkpoints_under_a_regular_file(demo_tokens, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the checkpoints directory should be\n")
    done = run_cli(cli(demo_tokens, tmp_path, *RUN, f"paths.checkpoints={blocker / 'checkpoints'}"))
    _one_line_error(done, str(blocker / "checkpoints"), "paths.checkpoints")
    assert not (tmp_path / "model").exists() and not (tmp_path / "reports" / "train.json").exists()


@contextmanager
def read_only(directory: Path):
    """`directory`, read-only: chmod for a user; for root, who writes through permissions, a
    read-only tmpfs mounted on it (EROFS), or a skip where mounting is not allowed."""
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    with tmpfs(directory, "ro,size=1m"):
        yield


def stage_cli(stage: str, *sets: str) -> list[str]:
    args = [sys.executable, "-m", "pipeline", stage]
    for f in DEMO_FILES:
        args += ["--params", str(f)]
    for item in sets:
        args += ["--set", item]
    return args


def test_a_disk_that_fills_up_during_tokenize(demo_tokens, tmp_path):
    """ENOSPC in the token files: one line naming the output and its key; the outputs that were
    there stay, and no staged copy is left on the full disk."""
    full, tokenizer = tmp_path / "full", tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "before.txt").write_text("the tokenizer from an earlier run\n")
    with tmpfs(full, "size=64k"):
        (full / "tokens").mkdir()
        (full / "tokens" / "before.txt").write_text("the tokens from an earlier run\n")
        done = run_cli(stage_cli("tokenize", f"paths.clean={demo_tokens.params.paths.clean}",
                                 f"paths.tokenizer={tokenizer}", f"paths.tokens={full / 'tokens'}",
                                 "tokenizer.vocab_size=512"))
        line = _one_line_error(done, str(full / "tokens"), "the disk is full", "paths.tokens", "nothing was replaced")
        assert "No space left on device" in line, line
        assert sorted(p.name for p in full.iterdir()) == ["tokens"], "a staged copy was left on the full disk"
        assert [p.name for p in (full / "tokens").iterdir()] == ["before.txt"]
    assert [p.name for p in tokenizer.iterdir()] == ["before.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_read_only_checkpoints(demo_tokens, tmp_path):
    with read_only(tmp_path / "checkpoints"):
        done = run_cli(cli(demo_tokens, tmp_path, *RUN))
    _one_line_error(done, str(tmp_path / "checkpoints"), "paths.checkpoints")


def test_reports_under_a_regular_file(demo_tokens, tmp_path):
    """The estimate stage's reports: the same one line, naming paths.reports."""
    blocker = tmp_path / "file"
    blocker.write_text("x\n")
    args = stage_cli("estimate", *tiny_sets(demo_tokens, tmp_path, f"paths.reports={blocker / 'reports'}"))
    _one_line_error(run_cli(args), str(blocker / "reports"), "paths.reports")


def test_reports_that_is_a_file(demo_tokens, tmp_path):
    """The folder itself a file: mkdir's "File exists" said as what is wrong."""
    reports = tmp_path / "reports"
    reports.write_text("a file where the reports folder should be\n")
    line = _one_line_error(run_cli(stage_cli("estimate", *tiny_sets(demo_tokens, tmp_path))), "paths.reports")
    assert f"{reports} is a file, not a folder" in line and "File exists" not in line, line


def test_log_file_under_a_regular_file(demo_tokens, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x\n")
    done = run_cli(cli(demo_tokens, tmp_path, *RUN) + ["--log", str(blocker / "train.log")])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "--log" in done.stderr, done.stderr
