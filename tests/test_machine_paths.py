"""What is committed runs on any machine: no file names a path that exists on one machine only (a
home directory, a build machine's work tree), which a reader elsewhere cannot follow."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Absolute paths under work, Users or root, a home other than the images' own (docker/'s
# budgetgpt), a pytest temporary directory.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|Users|root)/|(?<![\w.~-])/home/(?!budgetgpt\b)|/tmp/pytest-of-")


def test_no_committed_file_names_a_path_of_one_machine():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: no list of committed files")
    found = []
    for name in listed.stdout.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:   # a binary file
            continue
        found += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                  if MACHINE_PATH.search(line) and "MACHINE_PATH" not in line]
    assert not found, "\n".join(found)


def test_the_pattern_finds_such_paths():
    assert MACHINE_PATH.search("git -C /work/.mirror/karpathy+nanoGPT/repo log")
    assert MACHINE_PATH.search("cd /home/alice/budgetgpt") and MACHINE_PATH.search("/Users/bob/x")
    assert not MACHINE_PATH.search("HOME=/home/budgetgpt") and not MACHINE_PATH.search("~/work/x and ./work/y")
