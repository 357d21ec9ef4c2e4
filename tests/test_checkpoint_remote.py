"""pipeline.engine.checkpoint.remote and lease, against a real S3 server (moto, over HTTP, through
s3fs): the upload order, the prune, download and verify, and who may use a prefix."""
from __future__ import annotations

import itertools
import json
import threading
import time

import fsspec
import pytest
import torch

from pipeline.core import params as params_module
from pipeline.core.errors import PipelineError
from pipeline.engine.checkpoint import store
from pipeline.engine.checkpoint.lease import LEASE, RemoteLease
from pipeline.engine.checkpoint.remote import RemoteCheckpoints
from pipeline.model.build import build_model

TINY = params_module.Model(architecture="gpt2", n_layer=1, n_embd=32, n_head=2, context=16, dropout=0.0)
IDENTITY = {"train.lr": 0.01, "train.bin sha256": "ab"}
_buckets = itertools.count()


@pytest.fixture()
def url(s3_server):
    return f"s3://{s3_server.bucket(f'ckpt-{next(_buckets)}')}/runs/demo"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(TINY, 100, 0)
    return net, torch.optim.AdamW(net.parameters(), lr=1e-2)


def local_save(root, step, model, val_loss=None, identity=IDENTITY):
    net, opt = model
    meta = {"step": step, "tokens": step * 64, "val_loss": val_loss, "identity": identity}
    return store.save(root, step, net, {"optimizer": opt.state_dict()}, meta, {"train": [], "val": []})


def remote_files(url):
    fs, prefix = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return sorted(p[len(prefix) + 1:] for p in fs.find(prefix))


def opened(url, keep_last=2, lease_seconds=5.0, identity=IDENTITY):
    remote = RemoteCheckpoints(url, keep_last, lease_seconds)
    remote.open(identity)
    return remote


def test_files_go_up_first_and_the_commit_marker_last(url, model, tmp_path):
    remote = opened(url)
    order = []
    real_put = remote.fs.put_file
    remote.fs.put_file = lambda lpath, rpath, **kw: (order.append(rpath.rsplit("/", 1)[1]), real_put(lpath, rpath, **kw))
    remote.upload(local_save(tmp_path, 10, model))
    remote.close()
    assert order[-1] == store.SUMS and len(order) == len(set(order)) >= 4
    assert sorted(f for f in remote_files(url) if f.startswith("step-")) == sorted(f"step-000010/{n}" for n in order)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "the upload's snapshot is left behind"


def test_pruned_there_by_the_local_rule_keep_last_and_the_best(url, model, tmp_path):
    remote = opened(url, keep_last=2)
    for step, val in [(10, 2.0), (20, 1.0), (30, 1.5), (40, 1.7)]:
        remote.upload(local_save(tmp_path, step, model, val))
        remote.drain()
    remote.close()
    kept = {f.split("/")[0] for f in remote_files(url) if f.startswith("step-")}
    assert kept == {"step-000020", "step-000030", "step-000040"}   # the newest 2 and the best (20)
    assert LEASE not in remote_files(url), "the lease was not given back"


def test_a_newer_remote_step_is_downloaded_verified_and_resumable(url, model, tmp_path):
    up = opened(url)
    up.upload(local_save(tmp_path / "vm1", 10, model, 1.0))
    up.close()
    down = opened(url)
    assert down.newest_after(-1) == [10] and down.newest_after(10) == []
    fetched = down.download(10, tmp_path / "vm2")
    down.close()
    assert fetched == tmp_path / "vm2" / "step-000010"
    store.verify(fetched)
    for name in ("model.safetensors", "optimizer.pt", "meta.json"):
        assert (fetched / name).read_bytes() == (tmp_path / "vm1" / "step-000010" / name).read_bytes()


def test_a_damaged_remote_step_is_refused_and_nothing_is_left(url, model, tmp_path, capsys):
    up = opened(url)
    up.upload(local_save(tmp_path / "vm1", 10, model))
    up.close()
    fs, prefix = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{prefix}/step-000010/model.safetensors", b"truncated")
    down = opened(url)
    assert down.download(10, tmp_path / "vm2") is None
    down.close()
    assert "does not match its sha256" in capsys.readouterr().err
    assert list((tmp_path / "vm2").iterdir()) == []


def test_a_half_uploaded_step_is_not_a_checkpoint(url, model, tmp_path):
    path = local_save(tmp_path, 10, model)
    fs, prefix = fsspec.core.url_to_fs(url)
    for file in path.iterdir():
        if file.name != store.SUMS:   # killed before the marker
            fs.put_file(str(file), f"{prefix}/step-000010/{file.name}")
    remote = opened(url)
    assert remote.newest_after(-1) == []
    remote.close()


def test_another_runs_prefix_is_refused_not_overwritten(url, model, tmp_path):
    up = opened(url)
    up.upload(local_save(tmp_path, 10, model))
    up.close()
    before = remote_files(url)
    other = {**IDENTITY, "train.lr": 0.02}
    with pytest.raises(PipelineError, match=r"holds another run's checkpoints .*train.lr was 0.01, now 0.02.*new prefix"):
        opened(url, identity=other)
    assert remote_files(url) == before


def test_no_bucket_is_one_line_at_start(s3_server):
    with pytest.raises(PipelineError) as refused:
        opened("s3://no-such-bucket-here/run")
    message = str(refused.value)
    assert "\n" not in message and "no-such-bucket-here" in message and "bucket exists" in message


def test_a_second_live_run_is_refused(url):
    fs, prefix = fsspec.core.url_to_fs(url)
    with RemoteLease(fs, prefix, url, seconds=1.0):
        started = time.monotonic()
        with pytest.raises(PipelineError, match="in use by another live training run"):
            RemoteLease(fs, prefix, url, seconds=1.0).__enter__()
        assert time.monotonic() - started < 1.5, "a live heartbeat is seen within one lease period"


def test_a_lease_left_by_a_reclaimed_vm_is_taken_over(url, capsys):
    fs, prefix = fsspec.core.url_to_fs(url)
    reclaimed = RemoteLease(fs, prefix, url, seconds=1.0).__enter__()
    reclaimed._stop.set()            # the VM vanished: no more heartbeats, no release
    reclaimed._thread.join()
    started = time.monotonic()
    with RemoteLease(fs, prefix, url, seconds=1.0) as recovered:
        waited = time.monotonic() - started
        assert 0.9 < waited < 3, f"took over after {waited:.1f} s"
        assert json.loads(fs.cat_file(f"{prefix}/{LEASE}"))["id"] == recovered.holder["id"]
        reclaimed._renew()           # had the old holder only stalled, it now learns it lost
        assert reclaimed.lost and "another took over" in reclaimed.lost
    assert "took over the lease" in capsys.readouterr().err


def test_two_recoveries_racing_for_a_stale_lease_get_one_holder(url):
    fs, prefix = fsspec.core.url_to_fs(url)
    stale = {"id": "gone", "host": "reclaimed", "pid": 1, "heartbeat": 0}
    fs.pipe_file(f"{prefix}/{LEASE}", json.dumps(stale).encode())
    outcomes = []

    def recover():
        try:
            outcomes.append(RemoteLease(fs, prefix, url, seconds=5.0).__enter__())
        except PipelineError:
            outcomes.append(None)

    threads = [threading.Thread(target=recover) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    holders = [lease for lease in outcomes if lease]
    assert len(holders) == 1 and len(outcomes) == 4
    holders[0].__exit__(None, None, None)
