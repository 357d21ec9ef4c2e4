"""Outputs appear whole or not at all."""
from __future__ import annotations

from pathlib import Path

import pytest

from mountkit import tmpfs
from pipeline.core.atomic import is_mount_point, staging_dir, staging_file, write_json


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


def test_a_mount_point_is_replaced_inside_marker_last(tmp_path, monkeypatch):
    """A folder mounted on (a container's volume) cannot be renamed: its contents are replaced
    one rename each, with the marker its readers look for removed first and put back last."""
    final = tmp_path / "model"
    with tmpfs(final, "size=1m"):
        assert is_mount_point(final) and not is_mount_point(tmp_path)
        with staging_dir(final, marker="config.json") as stage:
            for name in ("config.json", "model.safetensors", "old.txt"):
                (stage / name).write_text("old")
        with pytest.raises(RuntimeError):
            with staging_dir(final, marker="config.json") as stage:
                (stage / "config.json").write_text("half")
                raise RuntimeError("killed")
        assert sorted(p.name for p in final.iterdir()) == ["config.json", "model.safetensors", "old.txt"]

        events = []
        real_unlink, real_rename = Path.unlink, Path.rename
        monkeypatch.setattr(Path, "unlink", lambda p, **kw: (events.append(("-", p.name)), real_unlink(p, **kw))[1])
        monkeypatch.setattr(Path, "rename", lambda p, t: (events.append(("+", Path(t).name)), real_rename(p, t))[1])
        with staging_dir(final, marker="config.json") as stage:
            for name in ("model.safetensors", "config.json", "tokenizer.json"):
                (stage / name).write_text("new")
        monkeypatch.undo()
        assert events[0] == ("-", "config.json") and events[-1] == ("+", "config.json"), events
        assert sorted(p.name for p in final.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
        assert all(p.read_text() == "new" for p in final.iterdir())
        assert is_mount_point(final)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
