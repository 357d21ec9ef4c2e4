"""Records between stages: versioned, validated, one clear error naming the stage to rerun."""
from __future__ import annotations

import json

import pytest

from pipeline.core.errors import PipelineError
from pipeline.engine.plan import Plan

PLAN = {"device": "cpu", "device_kind": "cpu", "devices": 1, "micro_batch_size": 4, "grad_accum_steps": 2,
        "precision": "fp32", "activation_checkpointing": False, "tokens_per_step": 512, "peak_flops": 1e12,
        "calibration_key": "cpu|test", "optimizer": "adamw", "model": {"n_layer": 2}}


def test_a_record_round_trips_and_is_written_whole(tmp_path):
    plan = Plan.make(**PLAN)
    plan.write(tmp_path / "plan.json")
    assert Plan.read(tmp_path / "plan.json") == plan
    assert json.loads((tmp_path / "plan.json").read_text())["format"] == Plan.FORMAT
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no staging file left beside it


@pytest.mark.parametrize("content, says", [
    (None, r"not found: run the estimate stage first"),
    ("{broken", r"is not valid JSON .*: rerun the estimate stage"),
    ("[1, 2]", r"should hold a JSON object: rerun the estimate stage"),
    (json.dumps({**PLAN, "format": 0}), r"is format 0 of a Plan record; this budgetgpt reads format 2: rerun the estimate"),
    (json.dumps({k: v for k, v in PLAN.items() if k != "devices"} | {"format": Plan.FORMAT}),
     r"not a valid Plan record \(devices: field required\): rerun the estimate stage"),
    (json.dumps({**PLAN, "format": Plan.FORMAT, "micro_batch_size": "four"}), r"micro_batch_size: input should be a valid integer"),
    (json.dumps({**PLAN, "format": Plan.FORMAT, "surprise": 1}), r"surprise: extra inputs are not permitted"),
])
def test_every_bad_record_is_one_error_naming_the_file_and_the_stage(tmp_path, content, says):
    path = tmp_path / "plan.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PipelineError, match=says) as err:
        Plan.read(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
