"""Snakemake end to end (tests/driverkit.py): the matrix both drivers share, then what only
Snakemake has: changes that rerun everything checked with its dry run, the corpus's set of files,
and values from --configfile, --config and a profile, each rerunning only the stages that read it."""
from __future__ import annotations

import os
import shutil

import pytest
import yaml

from driverkit import ALL, CORPUS, MODEL_FILES, both_drivers_matrix, expect, from_stage, set_value, snakemake, tiny_project

pytestmark = pytest.mark.slow


def test_snakemake_reruns_exactly_what_changed(tmp_path):
    work = tiny_project(tmp_path / "repo")
    both_drivers_matrix(snakemake, work)

    # Changes checked with Snakemake's own dry run (exact when the first stage to rerun is tokenize
    # or clean: everything downstream is), then undone, after which nothing runs: a tokenizer value
    # (tokenize onwards, never clean), a corpus file added (the set of inputs changed), one removed
    # (every stage).
    vocab = yaml.safe_load((work / "params.yaml").read_text())["tokenizer"]["vocab_size"]
    set_value(work, "tokenizer.vocab_size", vocab + 88)
    assert sorted(snakemake(work, "-n")[0]) == sorted(from_stage("tokenize")), "a tokenizer value"
    set_value(work, "tokenizer.vocab_size", vocab)
    assert snakemake(work)[0] == [], "the tokenizer value back"
    corpus = work / CORPUS
    shutil.copy(corpus / "tr.txt", corpus / "tr2.txt")
    os.utime(corpus / "tr2.txt", (0, 0))   # older than every output: only the set of inputs changed
    assert sorted(snakemake(work, "-n")[0]) == sorted(ALL), "a corpus file added"
    (corpus / "tr2.txt").unlink()
    assert snakemake(work)[0] == [], "the added corpus file removed again"
    (corpus / "tr.txt").rename(work / "tr.txt")
    assert sorted(snakemake(work, "-n")[0]) == sorted(ALL), "a corpus file removed"
    (work / "tr.txt").rename(corpus / "tr.txt")
    assert snakemake(work)[0] == [], "the removed corpus file back"

    # Values from anywhere Snakemake takes them, each rerunning only the stages that read it.
    (work / "more.yaml").write_text("train:\n  max_steps: 9\n")
    files = ("--configfile", "more.yaml")
    expect(snakemake, work, "train.max_steps in a --configfile", ["estimate", "train", "evaluate"], *files)
    expect(snakemake, work, "--config 'cost={budget_usd: null}'", ["estimate"],
            *files, "--config", "cost={budget_usd: null}")
    expect(snakemake, work, "an evaluate value in --config", ["evaluate"],
            *files, "--config", "cost={budget_usd: null}", "evaluate={max_new_tokens: 5}")
    profile = work / "tiny-profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump(
        {"config": {"cost": {"budget_usd": None}, "evaluate": {"max_new_tokens": 5, "temperature": 0.9}}}))
    expect(snakemake, work, "an evaluate value in a profile", ["evaluate"], *files, "--profile", "tiny-profile")

    values = yaml.safe_load((work / "logs/params/evaluate.yaml").read_text())
    assert values["evaluate"]["temperature"] == 0.9 and values["evaluate"]["max_new_tokens"] == 5
    assert yaml.safe_load((work / "logs/params/estimate.yaml").read_text())["cost"]["budget_usd"] is None
    assert {p.name for p in (work / "models/final").iterdir()} == MODEL_FILES
    # Snakemake sets OMP_NUM_THREADS to a job's threads: undeclared, torch would train on one core
    threads = min(2, os.cpu_count() or 1)  # the --cores this test gives
    assert f"on cpu ({threads} threads)" in (work / "logs/train.log").read_text()
