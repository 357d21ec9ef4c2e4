"""pipeline.engine.checkpoint: atomic, checksummed, verified, pruned, indexed."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.engine import checkpoint as ckpt
from pipeline.core import params as params_module
from pipeline.model.build import build_model

TINY = params_module.Model(architecture="gpt2", n_layer=1, n_embd=32, n_head=2, context=16, dropout=0.0)


def trained_bits():
    torch.manual_seed(0)
    model = build_model(TINY, 100, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(input_ids=torch.randint(0, 100, (2, 16))).logits.sum().backward()
    opt.step()
    return model, opt


def save(root, step, model, opt, val_loss):
    meta = {"step": step, "tokens": step * 64, "val_loss": val_loss}
    return ckpt.save(root, step, model, {"optimizer": opt.state_dict()}, meta, {"train": [], "val": []})


def test_round_trip_restores_weights_and_optimizer(tmp_path):
    model, opt = trained_bits()
    path = save(tmp_path, 5, model, opt, 3.0)
    assert path.name == "step-000005"
    ckpt.verify(path)
    sums = (path / ckpt.SUMS).read_text()
    for name in ("model.safetensors", "config.json", "optimizer.pt", "meta.json", "history.json"):
        assert f"  {name}\n" in sums

    torch.manual_seed(1)
    fresh = build_model(TINY, 100, 0)
    ckpt.load_weights(fresh, path)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    state = ckpt.load_state(path, "optimizer")
    assert torch.equal(state["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert ckpt.read_meta(path)["step"] == 5


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_sums"])
def test_damage_is_detected(tmp_path, damage):
    model, opt = trained_bits()
    path = save(tmp_path, 1, model, opt, 3.0)
    weights = path / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        (path / "optimizer.pt").unlink()
    else:
        (path / ckpt.SUMS).unlink()
    with pytest.raises(ckpt.CorruptCheckpoint):
        ckpt.verify(path)


def test_newest_valid_skips_a_corrupt_newest_loudly(tmp_path, capsys):
    model, opt = trained_bits()
    save(tmp_path, 1, model, opt, 3.0)
    newest = save(tmp_path, 2, model, opt, 2.0)
    (newest / "optimizer.pt").write_bytes(b"garbage")
    assert ckpt.newest_valid(tmp_path).name == "step-000001"
    assert "step-000002" in capsys.readouterr().err
    assert not newest.exists() and (tmp_path / "step-000002.corrupt").is_dir()
    assert [s for s, _ in ckpt.steps(tmp_path)] == [1]


def test_prune_keeps_the_last_k_and_the_best(tmp_path):
    model, opt = trained_bits()
    for step, val in [(1, 3.0), (2, 1.5), (3, 2.5), (4, 2.6), (5, None)]:
        save(tmp_path, step, model, opt, val)
    manifest = ckpt.prune_and_index(tmp_path, keep_last=2)
    assert [e["step"] for e in manifest["checkpoints"]] == [2, 4, 5]
    assert manifest["best"] == "step-000002" and manifest["latest"] == "step-000005"
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "step-000002", "step-000004", "step-000005"]


def test_a_failed_save_leaves_no_checkpoint_and_leftovers_are_removed(tmp_path):
    model, _ = trained_bits()
    with pytest.raises(Exception):
        ckpt.save(tmp_path, 7, model, {"optimizer": {"unpicklable": lambda: 0}}, {"step": 7}, {})
    assert ckpt.steps(tmp_path) == [] and list(tmp_path.iterdir()) == []
    (tmp_path / ".step-000007.tmp-99999").mkdir()  # what a SIGKILL mid-save leaves behind
    ckpt.clean_leftovers(tmp_path)
    assert list(tmp_path.iterdir()) == []
