"""The train stage: a language model from scratch on the token files, resumable, stopping when it should.

    python -m pipeline train --params params.yaml --params params/demo.yaml
    torchrun --standalone --nproc_per_node 2 -m pipeline train ...      # DDP, same code

Reads the token files (verified against their manifest and tokenizer) and the estimate stage's
plan (refused when made for another device); the engine (pipeline/engine/trainer.py) writes
checkpoints, the final model in save_pretrained format with its tokenizer, the train report and
per-step metrics (DVCLive).
"""
from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from pipeline.core.driver import first_process
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.cost import calibration
from pipeline.cost.budget import BudgetGuard, tokens_to_train
from pipeline.cost.report import CostReport
from pipeline.data.tokens import load as load_manifest
from pipeline.engine.plan import resolve_device, setup_for
from pipeline.engine.report import TrainReport
from pipeline.engine.signals import signals_caught
from pipeline.engine.trainer import Trainer


def run(params: Params, *, tokens: Path, tokenizer: Path, plan: Path, model: Path, train_live: Path,
        checkpoints: Path, train_report: Path, cost: Path) -> TrainReport:
    """`cost` (the estimate's report) is read only for the budget held while the run goes
    (pipeline/cost/budget.py) and the estimate the run is held against afterwards; none of the
    weights depend on it. The trainer is handed the guard and where to keep its measured speed
    (pipeline/cost/calibration.py): the engine never imports cost."""
    tokens, tokenizer = Path(tokens), Path(tokenizer)
    for note in params.auto_notes() if first_process() else ():  # "train.lr auto: 0.0018 = ...", once
        print(note, flush=True)
    manifest = load_manifest(tokens, tokenizer)
    tokenizer_files = _load_tokenizer(tokenizer, params)  # before any step: a missing one fails now
    hf_logging.disable_progress_bar()  # save_pretrained's one-shard bar, once per checkpoint, is noise
    device = resolve_device(params.train.device)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")
    setup = setup_for(params, Path(plan), device, accelerator.num_processes)
    outputs = {"model": Path(model), "train_live": Path(train_live), "checkpoints": Path(checkpoints),
               "train_report": Path(train_report)}
    estimate = CostReport.read_if_present(cost)
    guard = BudgetGuard(estimate, tokens_to_train(params))
    with signals_caught() as caught:
        trainer = Trainer(params, setup, accelerator, manifest, tokens, tokenizer_files, outputs, guard,
                          remember=calibration.remember, estimate=estimate.as_dict() if estimate else None,
                          caught=caught)
        try:
            return trainer.fit()
        finally:
            del trainer  # leave the GPU to the next stage
            if device == "cuda":
                torch.cuda.empty_cache()


def _load_tokenizer(tokenizer_dir: Path, params: Params):
    """The tokenizer models/final will ship, loaded from disk only (never the Hub), with the
    context as its model_max_length and truncation from the left, as generation wants it."""
    try:
        return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, truncation_side="left",
                                             model_max_length=params.model.context)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for one cause
        raise PipelineError(f"the tokenizer in {tokenizer_dir} cannot be loaded ({type(exc).__name__}): "
                            "rerun the tokenize stage") from None
