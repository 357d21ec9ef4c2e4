"""Resume: a killed, signalled or corrupted run continues exactly where the uninterrupted one would."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

from pipeline.registry import run_stage
from pipeline.engine import checkpoint as ckpt
from pipeline.engine import trainer as train
from trainkit import ROOT, cli, env, final_weights, manifest, max_difference, report, run_cli, tiny_params, train_losses

RUN = ("train.max_steps=30", "train.checkpoint_every=10", "train.eval_every=10")


def start(args):
    return subprocess.Popen(args, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(base, proc, step, timeout=300):
    """Block until checkpoint `step` is in the manifest (the run is inside its loop by then)."""
    deadline = time.monotonic() + timeout
    index = base / "checkpoints" / "manifest.json"
    while time.monotonic() < deadline:
        if index.is_file() and any(e["step"] >= step for e in json.loads(index.read_text())["checkpoints"]):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint {step} within {timeout} s")


def test_sigkill_then_resume_matches_an_uninterrupted_run(demo_tokens, tmp_path):
    reference = tmp_path / "reference"
    run_stage("train", tiny_params(demo_tokens, reference, *RUN)).as_dict()

    killed = tmp_path / "killed"
    proc = start(cli(demo_tokens, killed, *RUN))
    wait_for_checkpoint(killed, proc, 10)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert manifest(killed)["latest"] != "step-000030"  # it really died mid-run

    done = run_cli(cli(demo_tokens, killed, *RUN))
    assert done.returncode == 0, done.stderr
    assert report(killed)["resumed_from"] is not None
    assert max_difference(final_weights(killed), final_weights(reference)) <= 1e-6
    assert train_losses(killed) == train_losses(reference)
    assert report(killed)["loss"]["val"] == report(reference)["loss"]["val"]
    tsv = killed / "reports" / "train_live" / "plots" / "metrics" / "train" / "loss.tsv"
    assert len(tsv.read_text().splitlines()) == 1 + 30  # the DVCLive curve is whole, not just the tail


def test_sigterm_finishes_the_step_checkpoints_and_exits_nonzero(demo_tokens, tmp_path):
    proc = start(cli(demo_tokens, tmp_path, "train.max_steps=100000", "train.checkpoint_every=10",
                     "train.eval_every=10"))
    wait_for_checkpoint(tmp_path, proc, 10)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: SIGTERM: stopped after step") and "rerun the same command to resume" in message
    latest = manifest(tmp_path)["latest"]
    step = int(latest.removeprefix("step-"))
    assert f"step {step} " in message
    ckpt.verify(tmp_path / "checkpoints" / latest)
    assert ckpt.read_meta(tmp_path / "checkpoints" / latest)["step"] == step >= 10
    assert not (tmp_path / "model").exists()  # an interrupted run exports no final model


def test_a_corrupt_newest_checkpoint_is_skipped_loudly(demo_tokens, tmp_path, capsys):
    params = tiny_params(demo_tokens, tmp_path, "train.max_steps=10", "train.checkpoint_every=5")
    run_stage("train", params).as_dict()
    finished = final_weights(tmp_path)
    losses = train_losses(tmp_path)
    weights = tmp_path / "checkpoints" / "step-000010" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a disk that filled up
    capsys.readouterr()

    result = run_stage("train", params).as_dict()
    assert "step-000010 is corrupt" in capsys.readouterr().err
    assert result["resumed_from"] == "step-000005"
    assert (tmp_path / "checkpoints" / "step-000010.corrupt").is_dir()
    assert max_difference(final_weights(tmp_path), finished) == 0  # steps 6-10 retrained identically
    assert train_losses(tmp_path) == losses
    ckpt.verify(tmp_path / "checkpoints" / "step-000010")


def test_a_new_machine_resumes_bitwise_from_a_file_url(demo_tokens, tmp_path):
    """paths.checkpoints_remote: file:///mnt/nfs/... (a share every VM mounts): each checkpoint is
    uploaded into its own step folder, and a run killed on one machine, its disk gone, resumes on
    another from the share as if never stopped."""
    # a lease not renewed for 2 s is a dead machine's (the default waits two minutes)
    share = (f"paths.checkpoints_remote=file://{tmp_path / 'share' / 'run'}", "train.remote_lease_seconds=2")
    reference = tmp_path / "reference"
    done = run_cli(cli(demo_tokens, reference, *RUN))
    assert done.returncode == 0, done.stderr

    first = tmp_path / "vm-1"
    proc = start(cli(demo_tokens, first, *RUN, *share))
    uploaded = tmp_path / "share" / "run" / "step-000010" / ckpt.store.SUMS
    deadline = time.monotonic() + 300
    while not uploaded.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    shutil.rmtree(first)   # the machine's disk goes with it

    second = tmp_path / "vm-2"
    done = run_cli(cli(demo_tokens, second, *RUN, *share))
    assert done.returncode == 0, done.stderr
    resumed = report(second)["resumed_from"]
    assert int(resumed.removeprefix("step-")) >= 10 and f"fetched {resumed} from file://" in done.stdout + done.stderr
    ours, theirs = final_weights(second), final_weights(reference)
    assert all(ours[k].equal(theirs[k]) for k in theirs), "not bitwise identical to the uninterrupted run"
    kept = sorted(p.name for p in (tmp_path / "share" / "run").glob("step-*") if (p / ckpt.store.SUMS).is_file())
    assert kept[-1] == "step-000030", kept
