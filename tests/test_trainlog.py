"""What train shows while it runs: DVCLive never crashes on a diverged value; notes reach the terminal."""
from __future__ import annotations

import math

from pipeline.core import params as params_module
from pipeline.engine.trainlog import TrainLog
from trainkit import ROOT


def test_huge_or_infinite_values_are_not_logged_and_do_not_crash(tmp_path, capsys):
    cfg = params_module.load([ROOT / "params.yaml"]).train
    log = TrainLog(tmp_path / "live", True, cfg, 0)
    log.val({"step": 1, "loss": None, "perplexity": None})
    log.val({"step": 2, "loss": 750.0, "perplexity": math.inf})
    log.note("step 3: a note for the user")
    log.close()
    metrics = tmp_path / "live" / "plots" / "metrics" / "val"
    assert (metrics / "loss.tsv").read_text().splitlines()[1:] and not (metrics / "perplexity.tsv").exists()
    shown = capsys.readouterr()
    assert "a note for the user" in shown.out + shown.err and "not finite" in shown.out + shown.err
