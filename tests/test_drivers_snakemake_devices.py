"""Snakemake end to end (tests/driverkit.py): cost.num_devices from where Snakemake takes values
sets the GPUs a job holds and the processes train runs as (its own file: the matrix in
tests/test_drivers_snakemake.py is long, and the test files run in parallel, each whole)."""
from __future__ import annotations

import json

import pytest

from driverkit import ALL, expect, snakemake, tiny_project

pytestmark = pytest.mark.slow


def test_num_devices_set_where_snakemake_takes_values_trains_that_many_processes(tmp_path):
    """cost.num_devices from a --configfile or --config: the job holds that many GPUs and train
    runs that many processes, though its own params overlay does not carry the key."""
    work = tiny_project(tmp_path / "repo")
    (work / "two.yaml").write_text("cost:\n  num_devices: 2\n")
    expect(snakemake, work, "cost.num_devices: 2 in a --configfile", ALL, "--configfile", "two.yaml")
    assert _processes(work) == 2
    expect(snakemake, work, "the configfile dropped", ["estimate", "train", "evaluate"])
    assert _processes(work) == 1
    expect(snakemake, work, "cost.num_devices: 2 in --config", ["estimate", "train", "evaluate"],
           "--config", "cost={num_devices: 2}")
    assert _processes(work) == 2


def _processes(work) -> int:
    """The processes the last train ran as, by its report and by its log."""
    world = json.loads((work / "reports/train.json").read_text())["world"]
    assert f"x {world} process(es)" in (work / "logs/train.log").read_text()
    return world
