"""What a careless or unlucky user does to a training run, and the one clear exit each gets:
inputs that do not match their manifest, a missing tokenizer offline, bad JSON, a full disk,
skipped fp16 steps and set-aside checkpoints shown, not hidden."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import numpy as np
import pytest

from pipeline.core.provenance import file_sha256
from pipeline.data.tokens import write_tokens
from trainkit import cli, report, run_cli, tiny_params


@pytest.fixture
def data(demo_tokens, tmp_path):
    """A private copy of the demo tokens and tokenizer that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(demo_tokens.params.paths.tokens, root / "tokens")
    shutil.copytree(demo_tokens.params.paths.tokenizer, root / "tokenizer")
    return root


def train_cli(demo_tokens, base, data, *overrides, plan=True):
    return cli(demo_tokens, base, f"paths.tokens={data / 'tokens'}", f"paths.tokenizer={data / 'tokenizer'}",
               *overrides, plan=plan)


def one_error(done) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_another_tokenizer_than_the_tokens_were_made_with_is_refused(demo_tokens, tmp_path, data):
    tokenizer = data / "tokenizer" / "tokenizer.json"
    spec = json.loads(tokenizer.read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]
    tokenizer.write_text(json.dumps(spec))
    error = one_error(run_cli(train_cli(demo_tokens, tmp_path, data)))
    assert "is not the tokenizer" in error and "rerun the tokenize stage" in error
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "model").exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux) to cut the network")
def test_a_missing_tokenizer_fails_at_once_without_the_network(demo_tokens, tmp_path, data):
    shutil.rmtree(data / "tokenizer")
    args = train_cli(demo_tokens, tmp_path, data)
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"unshare -n is not permitted here: {probe.stderr.decode().strip()}")
    started = time.perf_counter()
    done = run_cli(["unshare", "-n", *args])
    assert time.perf_counter() - started < 60  # no waiting on the Hub
    error = one_error(done)
    assert "tokenizer" in error and "not found" in error and "rerun the tokenize stage" in error


def test_token_ids_outside_the_vocabulary_are_refused(demo_tokens, tmp_path, data):
    manifest = json.loads((data / "tokens" / "manifest.json").read_text())
    bad = np.full(1000, manifest["vocab_size"] + 5, dtype=np.uint16)
    write_tokens(data / "tokens" / "train.bin", bad)
    manifest |= {"train_tokens": 1000, "sha256": manifest["sha256"] | {"train.bin": file_sha256(data / "tokens" / "train.bin")}}
    (data / "tokens" / "manifest.json").write_text(json.dumps(manifest))
    error = one_error(run_cli(train_cli(demo_tokens, tmp_path, data)))
    assert f"token id {manifest['vocab_size'] + 5}, outside the vocabulary" in error


def test_token_files_swapped_under_existing_checkpoints_never_resume_silently(demo_tokens, tmp_path, data):
    assert run_cli(train_cli(demo_tokens, tmp_path, data, "train.max_steps=2")).returncode == 0
    train_bin = data / "tokens" / "train.bin"
    ids = np.array(np.memmap(train_bin, dtype=np.uint16, mode="r", offset=256))
    write_tokens(train_bin, ids[::-1].copy())  # other data, same size, manifest untouched
    error = one_error(run_cli(train_cli(demo_tokens, tmp_path, data, "train.max_steps=4")))
    assert "train.bin is not the file its manifest describes" in error
    assert report(tmp_path)["steps"] == 2


@pytest.mark.parametrize("record, stage", [("tokens/manifest.json", "tokenize"), ("plan.json", "estimate")])
def test_bad_json_in_a_record_is_one_line_naming_the_file_and_the_stage_to_rerun(demo_tokens, tmp_path, data,
                                                                                record, stage):
    target = data / record if record.startswith("tokens") else tmp_path / "reports" / record
    target.parent.mkdir(parents=True, exist_ok=True)
    args = train_cli(demo_tokens, tmp_path, data)
    target.write_text('{"format": 1, "device": ')
    error = one_error(run_cli(args))
    assert str(target) in error and "is not valid JSON" in error and f"rerun the {stage} stage" in error


def test_bad_json_in_a_checkpoint_is_set_aside_shown_and_the_run_goes_on(demo_tokens, tmp_path, data):
    assert run_cli(train_cli(demo_tokens, tmp_path, data, "train.max_steps=4", "train.checkpoint_every=2")).returncode == 0
    (tmp_path / "checkpoints" / "step-000004" / "meta.json").write_text("{not json")
    done = run_cli(train_cli(demo_tokens, tmp_path, data, "train.max_steps=6", "train.checkpoint_every=2"))
    assert done.returncode == 0, done.stderr
    assert "step-000004" in done.stderr and "corrupt" in done.stderr
    assert "kept aside as incomplete or corrupt" in done.stdout
    result = report(tmp_path)
    assert result["resumed_from"] == "step-000002" and result["steps"] == 6
    assert any("step-000004" in line for line in result["quarantined_checkpoints"])


def test_skipped_fp16_steps_are_shown_on_the_terminal(demo_tokens, tmp_path, monkeypatch, capsys):
    import math

    from pipeline.engine import step
    from pipeline.registry import run_stage

    real_update, calls = step.TrainStep.update, {"n": 0}

    def overflowing_update(self):
        calls["n"] += 1
        if calls["n"] <= 12:  # what an fp16 overflow leaves in the gradients
            next(self.model.parameters()).grad.fill_(math.inf)
        return real_update(self)

    monkeypatch.setattr(step.TrainStep, "update", overflowing_update)
    run_stage("train", tiny_params(demo_tokens, tmp_path, "train.precision=fp16", "train.max_steps=14"))
    assert report(tmp_path)["overflow_steps_skipped"] == 12
    shown = capsys.readouterr()
    err = shown.out + shown.err
    assert err.count("fp16 overflow, the loss scaler skipped this update") == 10  # then counted, not shown
    assert "further ones are counted in train.json" in err


def test_a_full_disk_for_checkpoints_is_one_message_and_keeps_what_was_kept(demo_tokens, tmp_path, data):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        ckpts = mount / "checkpoints"
        base = ("train.checkpoint_every=1", "train.keep_last=50", f"paths.checkpoints={ckpts}")
        done = run_cli(train_cli(demo_tokens, tmp_path, data, "train.max_steps=40", *base))
        error = one_error(done)
        assert "disk space" in error and str(ckpts) in error and "train.keep_last" in error
        kept = sorted(p.name for p in ckpts.glob("step-*"))
        assert kept  # what was written before the disk filled is intact
        from pipeline.engine import checkpoint

        for name in kept:
            checkpoint.verify(ckpts / name)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
