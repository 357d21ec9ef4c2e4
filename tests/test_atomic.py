"""Outputs appear whole or not at all."""
from __future__ import annotations

import pytest

from pipeline.core.atomic import staging_dir, staging_file, write_json


def test_a_failed_directory_write_leaves_the_old_one_and_no_debris(tmp_path):
    final = tmp_path / "out"
    with staging_dir(final) as stage:
        (stage / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staging_dir(final) as stage:
            (stage / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (final / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_file_is_replaced_in_one_rename(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})
    with pytest.raises(ValueError):
        with staging_file(path) as tmp:
            tmp.write_text("{partial")
            raise ValueError
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
