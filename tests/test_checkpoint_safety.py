"""pipeline.engine.checkpoint under damage: half-deleted and foreign directories, kills mid-prune and
mid-archive, bad JSON, a full disk. Nothing kept is lost, and the next run never wedges."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.engine import checkpoint as ckpt
from pipeline.core.errors import PipelineError
from pipeline.core.provenance import file_sha256

ROOT = Path(__file__).resolve().parent.parent


def tiny_model_and_optimizer():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=16,
                                       bos_token_id=0, eos_token_id=0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(input_ids=torch.randint(0, 16, (2, 8))).logits.sum().backward()
    opt.step()
    return model, opt


@pytest.fixture(scope="module")
def bits():
    return tiny_model_and_optimizer()


def save(root, step, bits, val_loss=3.0):
    model, opt = bits
    meta = {"step": step, "tokens": step * 64, "val_loss": val_loss}
    return ckpt.save(root, step, model, {"optimizer": opt.state_dict()}, meta, {"train": [], "val": []})


def rewrite_sums(path):
    """Make SHA256SUMS match the files again, as if the damage had been there before it was written."""
    files = sorted(f for f in path.iterdir() if f.name != ckpt.SUMS)
    lines = [f"{file_sha256(f)}  {f.name}\n" for f in files]
    (path / ckpt.SUMS).write_text("".join(lines))


def warning_lines(err):
    return [line for line in err.splitlines() if line.startswith("WARNING")]


# ---- half-deleted and foreign directories

def test_a_half_deleted_checkpoint_is_quarantined_and_the_newest_valid_one_resumes(tmp_path, bits, capsys):
    old = save(tmp_path, 5, bits)
    save(tmp_path, 10, bits)
    for f in old.iterdir():  # what a kill in the middle of deleting step-5 left
        if f.name != "model.safetensors":
            f.unlink()

    assert ckpt.newest_valid(tmp_path).name == "step-000010"
    [warning] = warning_lines(capsys.readouterr().err)
    assert "step-000005 is corrupt" in warning and "no SHA256SUMS" in warning
    assert (tmp_path / "step-000005.corrupt" / "model.safetensors").is_file()  # kept for a look
    assert ckpt.quarantined(tmp_path) == ["step-000005.corrupt: step-000005 has no SHA256SUMS (an unfinished "
                                          "or foreign directory)"]
    manifest = ckpt.prune_and_index(tmp_path, keep_last=3)
    assert [e["dir"] for e in manifest["checkpoints"]] == ["step-000010"]


def drop_meta(path):
    (path / "meta.json").unlink()


def bad_json_meta(path):
    (path / "meta.json").write_text('{"step": 5, "tokens":')
    rewrite_sums(path)


def meta_without_keys(path):
    (path / "meta.json").write_text('{"step": 5}')
    rewrite_sums(path)


def drop_sums(path):
    (path / ckpt.SUMS).unlink()


@pytest.mark.parametrize("damage, why", [(drop_meta, "meta.json is missing"),
                                         (bad_json_meta, "meta.json is not valid JSON"),
                                         (meta_without_keys, "meta.json lacks tokens, val_loss"),
                                         (drop_sums, "no SHA256SUMS")])
def test_prune_and_index_quarantines_a_damaged_directory_instead_of_crashing(tmp_path, bits, capsys, damage, why):
    damage(save(tmp_path, 5, bits))
    save(tmp_path, 10, bits)
    manifest = ckpt.prune_and_index(tmp_path, keep_last=3)
    assert [e["dir"] for e in manifest["checkpoints"]] == ["step-000010"]
    [warning] = warning_lines(capsys.readouterr().err)
    assert "step-000005" in warning and why in warning
    [line] = ckpt.quarantined(tmp_path)
    assert line.startswith("step-000005.corrupt: ") and why in line


KILLED_WHILE_PRUNING = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from pipeline.engine import checkpoint as ckpt

    def rmtree_then_die(path, *args, **kwargs):
        # delete most of the directory, as a real rmtree would have got that far, then SIGKILL
        for f in sorted(Path(path).iterdir()):
            if f.name != "model.safetensors":
                f.unlink()
        os.kill(os.getpid(), signal.SIGKILL)

    shutil.rmtree = rmtree_then_die
    ckpt.prune_and_index(Path(sys.argv[1]), keep_last=1)
""")


def run_python(code, *args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, **kwargs)


def test_a_kill_9_in_the_middle_of_pruning_does_not_wedge_the_next_run(tmp_path, bits, capsys):
    for step in (1, 2, 3):
        save(tmp_path, step, bits, val_loss=4.0 - step)
    died = run_python(KILLED_WHILE_PRUNING, tmp_path, capture_output=True, text=True, timeout=120)
    assert died.returncode == -signal.SIGKILL, died.stderr

    ckpt.clean_leftovers(tmp_path)  # what the next run does first
    assert ckpt.newest_valid(tmp_path).name == "step-000003"
    manifest = ckpt.prune_and_index(tmp_path, keep_last=1)
    assert manifest["latest"] == manifest["best"] == "step-000003"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "step-000003"]
    ckpt.verify(tmp_path / "step-000003")
    assert warning_lines(capsys.readouterr().err) == []  # a hidden trash directory is no corruption


class Killed(BaseException):
    """Stands in for SIGKILL inside this process: nothing after it runs."""


def test_an_archive_killed_half_way_is_finished_by_the_next_run(tmp_path, bits, monkeypatch):
    for step in (1, 2, 3):
        save(tmp_path, step, bits)
    ckpt.prune_and_index(tmp_path, keep_last=3)
    real_rename, moves = Path.rename, []

    def rename_then_die(self, target):
        if "previous-runs" in str(target) and moves:
            raise Killed
        moves.append(self.name)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_then_die)
    with pytest.raises(Killed):
        ckpt.archive(tmp_path, "another lr")
    monkeypatch.undo()
    assert moves == ["step-000001"]  # the run died with two checkpoints still in place

    ckpt.clean_leftovers(tmp_path)
    target = tmp_path / "previous-runs" / "run-1"
    assert sorted(p.name for p in target.iterdir()) == ["WHY.txt", "manifest.json", "step-000001",
                                                        "step-000002", "step-000003"]
    assert (target / "WHY.txt").read_text() == "another lr\n"
    assert ckpt.steps(tmp_path) == [] and not (tmp_path / ckpt.ARCHIVING).exists()
    assert ckpt.newest_valid(tmp_path) is None  # the new run starts afresh, as it had decided


def test_leftovers_are_removed_but_a_checkpoint_moved_aside_is_put_back(tmp_path, bits):
    real = save(tmp_path, 5, bits)
    real.rename(tmp_path / ".step-000005.old-4242")  # killed between the two renames of a replacement
    save(tmp_path, 6, bits).rename(tmp_path / ".trash-step-000006-4242")  # killed mid-prune
    (tmp_path / ".step-000007.tmp-4242").mkdir()  # killed mid-save
    (tmp_path / ".manifest.json.tmp-4242").write_text("{")  # killed mid-manifest
    ckpt.clean_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005"]
    ckpt.verify(tmp_path / "step-000005")


def test_the_index_names_the_best_checkpoint_and_a_damaged_one_is_one_error(tmp_path, bits):
    assert ckpt.read_index(tmp_path) is None and ckpt.best_entry(tmp_path) is None
    for step, val in [(1, 3.0), (2, 1.5), (3, None)]:
        save(tmp_path, step, bits, val_loss=val)
    manifest = ckpt.prune_and_index(tmp_path, keep_last=3)
    assert ckpt.read_index(tmp_path) == manifest
    assert ckpt.best_entry(tmp_path) == {"step": 2, "dir": "step-000002", "tokens": 128, "val_loss": 1.5}
    (tmp_path / "manifest.json").write_text('{"checkpoints": [')
    with pytest.raises(PipelineError, match=r"manifest\.json is not valid JSON .*rerun the train stage"):
        ckpt.read_index(tmp_path)


# ---- bad JSON

@pytest.mark.parametrize("name", ["meta.json", "history.json"])
def test_bad_json_is_quarantined_on_resume_not_a_traceback(tmp_path, bits, capsys, name):
    save(tmp_path, 5, bits)
    newest = save(tmp_path, 10, bits)
    (newest / name).write_text("{not json")
    rewrite_sums(newest)  # the JSON itself is what is wrong, not a checksum
    assert ckpt.newest_valid(tmp_path).name == "step-000005"
    [warning] = warning_lines(capsys.readouterr().err)
    assert f"step-000010/{name} is not valid JSON" in warning
    assert (tmp_path / "step-000010.corrupt").is_dir()


@pytest.mark.parametrize("reader, name", [(ckpt.read_meta, "meta.json"), (ckpt.read_history, "history.json")])
def test_reading_bad_json_raises_one_line_naming_the_file(tmp_path, bits, reader, name):
    path = save(tmp_path, 5, bits)
    (path / name).write_bytes(b"\x00\xff garbage" if name == "meta.json" else b"[1, 2,")
    with pytest.raises(PipelineError) as err:
        reader(path)
    assert isinstance(err.value, ckpt.CorruptCheckpoint)
    message = str(err.value)
    assert str(path / name) in message and "\n" not in message


# ---- disk space

def assert_space_message(message, root):
    assert f"in {root}:" in message and "needs about" in message and "free" in message
    assert "iB" in message  # human units
    assert "train.keep_last" in message and "paths.checkpoints" in message
    assert "\n" not in message


def assert_only_the_kept_checkpoint(root, kept):
    assert [path.name for _, path in ckpt.steps(root)] == [kept.name]
    ckpt.verify(kept)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging copy left


def test_save_refuses_when_the_disk_lacks_room(tmp_path, bits, monkeypatch):
    kept = save(tmp_path, 1, bits)
    (tmp_path / "previous-runs" / "run-1").mkdir(parents=True)
    (tmp_path / "previous-runs" / "run-1" / "weights").write_bytes(b"0" * 5000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(total=10**9, used=10**9,
                                                                                 free=300 * 1024))
    with pytest.raises(PipelineError) as err:
        save(tmp_path, 2, bits)
    message = str(err.value)
    assert_space_message(message, tmp_path)
    assert "checkpoint step-000002" in message and "only 300.0 KiB is free" in message
    assert f"delete {tmp_path / 'previous-runs'} (" in message
    assert_only_the_kept_checkpoint(tmp_path, kept)


def test_the_needed_space_is_the_newest_checkpoints_size_or_the_payload(tmp_path, bits):
    model, opt = bits
    payload = ckpt.payload_bytes(model, {"optimizer": opt.state_dict()})
    weights = sum(p.nbytes for p in model.parameters())  # the tied lm_head counted once
    assert 3 * weights <= payload < 3 * weights + 4096  # weights + AdamW's two moments
    assert ckpt.expected_size(tmp_path, payload) == payload
    kept = save(tmp_path, 1, bits)
    assert ckpt.expected_size(tmp_path, 1) == ckpt.disk_bytes(kept) > payload


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def torch_stream_failure(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


@pytest.mark.parametrize("failure", [enospc, torch_stream_failure])
def test_a_write_that_runs_out_of_space_is_one_error_and_keeps_what_was_kept(tmp_path, bits, monkeypatch, failure):
    kept = save(tmp_path, 1, bits)
    monkeypatch.setattr(torch, "save", failure)
    with pytest.raises(PipelineError) as err:
        save(tmp_path, 2, bits)
    assert_space_message(str(err.value), tmp_path)
    assert "the disk filled up" in str(err.value)
    assert_only_the_kept_checkpoint(tmp_path, kept)


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, bits, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        save(tmp_path, 1, bits)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, or a skip saying why none can be mounted here."""
    where = tmp_path / "small"
    where.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here to make a small file system")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where):
    with open(where / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_save_on_a_really_full_disk(small_disk, bits, monkeypatch):
    root = small_disk / "checkpoints"
    kept = save(root, 1, bits)
    fill(small_disk)

    with pytest.raises(PipelineError) as checked:
        save(root, 2, bits)
    assert_space_message(str(checked.value), root)
    assert_only_the_kept_checkpoint(root, kept)

    monkeypatch.setattr(ckpt.space, "ensure_space", lambda *args: None)  # as if the space went between check and write
    with pytest.raises(PipelineError) as failed:
        save(root, 2, bits)
    assert "the disk filled up" in str(failed.value)
    assert_space_message(str(failed.value), root)
    assert_only_the_kept_checkpoint(root, kept)


def test_a_damaged_archive_journal_is_one_error_saying_what_to_do(tmp_path, bits):
    save(tmp_path, 1, bits)
    (tmp_path / ckpt.ARCHIVING).write_text("{")
    with pytest.raises(PipelineError, match=r"\.archiving\.json is not valid JSON .*: delete it and rerun"):
        ckpt.clean_leftovers(tmp_path)
    assert [p.name for _, p in ckpt.steps(tmp_path)] == ["step-000001"]
