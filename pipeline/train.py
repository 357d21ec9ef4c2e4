"""The train stage: GPT-2 from scratch on the token files, resumable, stopping when it should.

    python -m pipeline train --params params.yaml --params params/demo.yaml
    torchrun --standalone --nproc_per_node 2 -m pipeline train ...      # DDP, same code

Reads data/tokens/, data/tokenizer/ and (when train.* are "auto") reports/plan.json; writes
checkpoints/step-NNNNNN/ + checkpoints/manifest.json, models/final/, reports/train.json and
per-step metrics in reports/train_live/ (DVCLive).

accelerate sets up devices and DDP; autocast and the fp16 GradScaler are ours because accelerate,
asked for fp16 on CPU, trains in fp32 while reporting fp16. The precision recorded is the dtype the
model's logits really came out in.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import AutoTokenizer, get_cosine_with_min_lr_schedule_with_warmup
from transformers.utils import logging as hf_logging

from pipeline import checkpoint as ckpt
from pipeline.atomic import staging_dir, write_json
from pipeline.batches import TrainWindows, stack_windows, val_starts
from pipeline.errors import PipelineError
from pipeline.model import build_model, count_parameters
from pipeline.params import Params
from pipeline.provenance import record
from pipeline.tokens import read_tokens
from pipeline.trainlog import Meter, TrainLog
from pipeline.trainsetup import Setup, resolve_device, resolve_setup

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_OF = {v: k for k, v in DTYPES.items()}
# Train losses averaged to judge a spike: long enough to ride out batch-to-batch noise.
SPIKE_WINDOW = 20
# Train params that shape the weights: a checkpoint made with other values is another run.
# Stopping rules (max_steps, patience, ...) and the hardware plan may change on resume.
RESUME_KEYS = ("seed", "tokens_per_step", "lr", "min_lr", "warmup_steps", "weight_decay", "beta1", "beta2",
               "grad_clip")


class TrainingInterrupted(PipelineError):
    """SIGTERM/SIGINT: the step finished and a checkpoint was written; rerun to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class TrainingDiverged(PipelineError):
    """Non-finite or spiking loss: stopped without saving the suspect weights."""


def run(params: Params, tokens: str | Path | None = None, tokenizer: str | Path | None = None,
        plan: str | Path | None = None) -> dict[str, Any]:
    paths = params.paths
    tokens = Path(tokens or paths.tokens)
    tokenizer = Path(tokenizer or paths.tokenizer)
    plan = Path(plan or paths.reports / "plan.json")
    manifest = _read_manifest(tokens)
    hf_logging.disable_progress_bar()  # save_pretrained's one-shard bar, once per checkpoint, is noise
    device = resolve_device(params.train.device)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")
    setup = resolve_setup(params, plan, device, accelerator.num_processes)
    trainer = Trainer(params, setup, accelerator, manifest, tokens, tokenizer)
    try:
        with _signals_caught() as caught:
            trainer.caught = caught
            return trainer.fit()
    finally:
        del trainer  # the seeds' `del model; torch.cuda.empty_cache()`: leave the GPU to the next stage
        if device == "cuda":
            torch.cuda.empty_cache()


class Trainer:
    def __init__(self, params: Params, setup: Setup, accelerator: Accelerator, manifest: dict[str, Any],
                 tokens: Path, tokenizer: Path):
        self.params, self.setup, self.acc, self.manifest = params, setup, accelerator, manifest
        self.tokenizer_dir = tokenizer
        self.cfg = params.train
        self.root = params.paths.checkpoints
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.context = params.model.context
        self.vocab = int(manifest["vocab_size"])
        self.windows = TrainWindows(tokens / "train.bin", self.context,
                                    self.cfg.tokens_per_step // self.context, self.cfg.seed)
        self.val_tokens = read_tokens(tokens / "val.bin")
        # the subset depends on params alone, so val losses stay comparable across a resume on
        # other hardware (another micro-batch or process count), which early stopping relies on
        val = val_starts(tokens / "val.bin", self.context, self.cfg.eval_batches * self.windows.seqs_per_step)
        self.val_mine = val[self.rank::self.world]
        self.caught: dict[str, int] = {}

        torch.manual_seed(self.cfg.seed)
        self.raw = build_model(params.model, self.vocab, int(manifest["eot_token_id"])).to(accelerator.device)
        self.parameters = count_parameters(self.raw)
        if setup.activation_checkpointing:
            self.raw.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model = accelerator.prepare(torch.compile(self.raw) if setup.compile else self.raw)
        self.optimizer = self._optimizer()
        horizon = self.cfg.max_steps
        if self.cfg.max_tokens:
            horizon = min(horizon, math.ceil(self.cfg.max_tokens / self.cfg.tokens_per_step))
        self.scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            self.optimizer, self.cfg.warmup_steps, horizon, min_lr=self.cfg.min_lr)
        self.scaler = torch.amp.GradScaler(setup.device, enabled=setup.precision == "fp16")
        self.autocast_dtype = DTYPES[setup.precision]

        self.step = 0
        self.train_hours = 0.0  # across resumes
        self.best_val = math.inf
        self.bad_evals = 0
        self.history: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
        self.nonfinite_in_row = 0
        self.counts = {"nonfinite_steps_skipped": 0, "overflow_steps_skipped": 0}
        self.last_eval_step = -1
        self.last_ckpt_step = -1
        self.time_up = False
        self.ran_precision: str | None = None
        self.resumed_from: str | None = None

    # ---- the loop
    def fit(self) -> dict[str, Any]:
        self._resume()
        self._announce()
        self.meter = Meter(self.params, self.setup, self.vocab, self.acc.device)
        self.log = TrainLog(self.params.paths.reports / "train_live", self.acc.is_main_process,
                            self.cfg, self.step)
        try:
            self.log.replay(self.history)
            while not (reason := self._stop_reason()):
                self._train_step()
                if self.caught:
                    self._interrupted()
                if self.step % self.cfg.eval_every == 0 or self.step % self.cfg.checkpoint_every == 0:
                    self._evaluate()
                if self.step % self.cfg.checkpoint_every == 0:
                    self._checkpoint()
            if self.last_eval_step != self.step:
                self._evaluate()
            if self.last_ckpt_step != self.step:
                self._checkpoint()
            return self._finish(reason)
        finally:
            self.log.close()

    def _train_step(self) -> None:
        s, cfg = self.setup, self.cfg
        self.meter.step_started()
        # dropout draws from (seed, step, rank) alone, so resume needs no RNG state
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, self.step, self.rank]).generate_state(1)[0]))
        loss_sum = torch.zeros((), device=self.acc.device)
        for micro in range(s.grad_accum_steps):
            x, y = self.windows.batch(self.step, micro, self.rank, self.world, s.micro_batch_size)
            x, y = self._to_device(x), self._to_device(y)
            last = micro == s.grad_accum_steps - 1
            with nullcontext() if last else self.acc.no_sync(self.model):
                with self._autocast():
                    logits = self.model(input_ids=x).logits
                    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
                self._check_precision(logits)
                # each micro-batch holds the same number of tokens, so mean/accum is the step's mean
                self.scaler.scale(loss / s.grad_accum_steps).backward()
            loss_sum += loss.detach()
        signalled = float(bool(self.caught))
        over_time = float(bool(cfg.max_hours) and self.train_hours + self.meter.run_hours() >= cfg.max_hours)
        agreed = self.acc.reduce(torch.stack([loss_sum / s.grad_accum_steps,
                                              torch.tensor(signalled, device=self.acc.device),
                                              torch.tensor(over_time, device=self.acc.device)]), "sum")
        loss_value, signalled, over_time = agreed.tolist()
        loss_value /= self.world
        self.time_up = over_time > 0
        if signalled and not self.caught:
            self.caught["signum"] = signal.SIGTERM  # another rank was signalled

        lr = self.scheduler.get_last_lr()[0]
        grad_norm = None
        if not math.isfinite(loss_value):
            self.nonfinite_in_row += 1
            self.counts["nonfinite_steps_skipped"] += 1
            if self.nonfinite_in_row >= cfg.max_nonfinite_steps:
                self._diverged("nonfinite_loss", f"the training loss was non-finite for {self.nonfinite_in_row} "
                                                 f"steps in a row (step {self.step + 1})")
        else:
            self.nonfinite_in_row = 0
            self._check_spike(loss_value)
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.grad_clip or math.inf)
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if scale is not None and self.scaler.get_scale() < scale:
                self.counts["overflow_steps_skipped"] += 1
            grad_norm = norm.item()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        entry = {"step": self.step, "loss": _json_float(loss_value), "lr": lr, "grad_norm": _json_float(grad_norm)}
        self.history["train"].append(entry)
        self.meter.step_done(self.cfg.tokens_per_step)
        with self.meter.timed("log"):
            self.log.train(entry, self.meter)

    def _evaluate(self) -> None:
        self.raw.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.acc.device)
        with torch.no_grad(), self.meter.timed("eval"):
            for i in range(0, len(self.val_mine), self.setup.micro_batch_size):
                x, y = stack_windows(self.val_tokens, self.val_mine[i:i + self.setup.micro_batch_size], self.context)
                x, y = self._to_device(x), self._to_device(y)
                with self._autocast():
                    logits = self.raw(input_ids=x).logits
                    total[0] += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").double()
                total[1] += y.numel()
                del logits, x, y
        self.raw.train()
        if self.setup.device == "cuda":
            torch.cuda.empty_cache()
        loss_sum, count = self.acc.reduce(total, "sum").tolist()
        val = loss_sum / count
        self.last_eval_step = self.step
        if val < self.best_val - self.cfg.min_delta:
            self.best_val, self.bad_evals = val, 0
        else:
            self.bad_evals += 1
        entry = {"step": self.step, "loss": _json_float(val), "perplexity": _json_float(_exp(val))}
        self.history["val"].append(entry)
        with self.meter.timed("log"):
            self.log.val(entry)

    # ---- stopping
    def _stop_reason(self) -> str | None:
        cfg, last_val = self.cfg, self.history["val"][-1]["loss"] if self.history["val"] else None
        if self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_tokens and self.step * cfg.tokens_per_step >= cfg.max_tokens:
            return "max_tokens"
        if last_val is not None and cfg.target_val_loss and last_val <= cfg.target_val_loss:
            return "target_val_loss"
        if last_val is not None and cfg.target_perplexity and _exp(last_val) <= cfg.target_perplexity:
            return "target_perplexity"
        if self.bad_evals >= cfg.patience:
            return "early_stopping"
        if self.time_up:
            return "max_hours"
        return None

    def _check_spike(self, loss: float) -> None:
        recent = [e["loss"] for e in self.history["train"][-SPIKE_WINDOW:] if e["loss"] is not None]
        if len(recent) == SPIKE_WINDOW and loss > self.cfg.loss_spike_factor * (sum(recent) / len(recent)):
            self._diverged("loss_spike", f"the training loss jumped to {loss:.3f} at step {self.step + 1}, over "
                                         f"train.loss_spike_factor={self.cfg.loss_spike_factor} x its running "
                                         f"average {sum(recent) / len(recent):.3f}")

    def _diverged(self, reason: str, what: str) -> None:
        last = ckpt.dirname(self.last_ckpt_step) if self.last_ckpt_step >= 0 else None
        keep = (f"the last good checkpoint, {self.root / last}, is intact" if last
                else "no checkpoint was written yet")
        if self.acc.is_main_process:
            write_json(self.params.paths.reports / "train.json",
                       self._report(reason) | {"stop_message": what})
        raise TrainingDiverged(f"training stopped: {what}; {keep}. Rerunning with another train.precision "
                               "(fp16 overflows first) resumes from it; a lower train.lr or more "
                               f"train.warmup_steps starts a new run (the old checkpoints move to "
                               f"{self.root}/previous-runs/)")

    def _interrupted(self) -> None:
        signum = int(self.caught["signum"])
        self._checkpoint()
        name = signal.Signals(signum).name
        raise TrainingInterrupted(f"{name}: stopped after step {self.step} and saved "
                                  f"{self.root / ckpt.dirname(self.step)}; rerun the same command to resume "
                                  "from it", signum)

    # ---- checkpoints
    def _identity(self) -> dict[str, Any]:
        m = self.manifest
        ident = {f"model.{k}": v for k, v in self.params.section("model").items()}
        ident |= {f"train.{k}": getattr(self.cfg, k) for k in RESUME_KEYS}
        ident |= {"vocab_size": m["vocab_size"], "eot_token_id": m["eot_token_id"],
                  "train.bin sha256": m["sha256"]["train.bin"], "val.bin sha256": m["sha256"]["val.bin"],
                  "tokenizer sha256": m["tokenizer_sha256"]}
        return ident

    def _checkpoint(self) -> None:
        if self.acc.is_main_process:
            meta = {
                "step": self.step,
                "tokens": self.step * self.cfg.tokens_per_step,
                "val_loss": self.history["val"][-1]["loss"] if self.last_eval_step == self.step else None,
                "data_position": {"next_step": self.step, "epochs": self.windows.epochs(self.step),
                                  "rng": "reseeded every step from (train.seed, step, rank)"},
                "train_hours": self.train_hours + self.meter.run_hours(),
                "best_val_loss": _json_float(self.best_val),
                "bad_evals": self.bad_evals,
                "counts": self.counts,
                "identity": self._identity(),
                "setup": asdict(self.setup),
                "params": self.params.as_dict(),
            }
            states = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            if self.scaler.is_enabled():
                states["scaler"] = self.scaler.state_dict()
            with self.meter.timed("checkpoint"):
                ckpt.save(self.root, self.step, self.raw, states, meta, self.history)
                ckpt.prune_and_index(self.root, self.cfg.keep_last)
        self.acc.wait_for_everyone()
        self.last_ckpt_step = self.step

    def _resume(self) -> None:
        found: list[Any] = [None]
        if self.acc.is_main_process:
            ckpt.remove_staging_leftovers(self.root)
            path = ckpt.newest_valid(self.root)
            if path and (diff := self._differences(ckpt.read_meta(path)["identity"])):
                # another run's checkpoints (a changed lr, model or corpus): keep them, start afresh
                aside = ckpt.archive(self.root, f"{path.name} came from a different run: {diff}")
                print(f"WARNING: {path} comes from a different run ({diff}): moved the old checkpoints "
                      f"to {aside} (delete it when you no longer need it) and starting afresh",
                      file=sys.stderr)
                path = None
            found = [str(path) if path else None]
            if path:
                ckpt.prune_and_index(self.root, self.cfg.keep_last)  # drop what was moved aside
        if self.world > 1:
            broadcast_object_list(found)
        if found[0] is None:
            return
        path = Path(found[0])
        meta = ckpt.read_meta(path)
        ckpt.load_weights(self.raw, path)
        self.optimizer.load_state_dict(ckpt.load_state(path, "optimizer"))
        self.scheduler.load_state_dict(ckpt.load_state(path, "scheduler"))
        if self.scaler.is_enabled() and (path / "scaler.pt").is_file():
            self.scaler.load_state_dict(ckpt.load_state(path, "scaler"))
        self.history = ckpt.read_history(path)
        self.step = self.last_ckpt_step = meta["step"]
        if meta["val_loss"] is not None:
            self.last_eval_step = self.step
        self.train_hours = meta["train_hours"]
        self.best_val = meta["best_val_loss"] if meta["best_val_loss"] is not None else math.inf
        self.bad_evals = meta["bad_evals"]
        self.counts = meta["counts"]
        self.resumed_from = path.name

    def _differences(self, saved: dict[str, Any]) -> str:
        now = self._identity()
        return "; ".join(f"{k} was {saved.get(k)!r}, now {now[k]!r}" for k in now if saved.get(k) != now[k])

    # ---- outputs
    def _finish(self, reason: str) -> dict[str, Any]:
        report = self._report(reason)
        kwh = self.acc.reduce(torch.tensor(math.nan if report["kwh"] is None else report["kwh"],
                                           device=self.acc.device), "sum").item()
        report["kwh"] = kwh if math.isfinite(kwh) else None  # every GPU's, or none
        if self.acc.is_main_process:
            with staging_dir(self.params.paths.model) as stage:
                self.raw.save_pretrained(stage, safe_serialization=True)
                AutoTokenizer.from_pretrained(self.tokenizer_dir).save_pretrained(stage)
            write_json(self.params.paths.reports / "train.json", report)
        self.acc.wait_for_everyone()
        self.log.done(reason)
        return report

    def _report(self, reason: str) -> dict[str, Any]:
        losses = [e["loss"] for e in self.history["train"] if e["loss"] is not None]
        manifest = self.root / "manifest.json"
        return {
            "steps": self.step,
            "tokens": self.step * self.cfg.tokens_per_step,
            "epochs": self.windows.epochs(self.step),
            "stop_reason": reason,
            "resumed_from": self.resumed_from,
            "wall_hours": self.train_hours + self.meter.run_hours(),
            **self.meter.summary(self.ran_precision or self.setup.precision),
            "precision": self.ran_precision or self.setup.precision,
            "device": self.setup.device,
            "parameters": self.parameters,
            **{k: v for k, v in asdict(self.setup).items() if k not in ("device", "precision")},
            "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                     "min": min(losses) if losses else None, "val": self.history["val"],
                     "best_val": _json_float(self.best_val)},
            **self.counts,
            "checkpoints": json.loads(manifest.read_text()) if manifest.is_file() else None,
            **record({"model": self.params.section("model"), "train": self.params.section("train")}),
        }

    def _announce(self) -> None:
        s = self.setup
        if self.acc.is_main_process:
            print(f"model: {self.parameters:,} parameters ({self.params.model.n_layer} layers, "
                  f"{self.params.model.n_embd} wide, context {self.context}, vocab {self.vocab})")
            print(f"tokens per step: {s.micro_batch_size} x {s.grad_accum_steps} accumulation x {s.world} "
                  f"process(es) x {self.context} = {self.cfg.tokens_per_step:,}; precision {s.precision} on "
                  f"{s.device}; activation checkpointing {s.activation_checkpointing} ({s.settings_from})")
            if self.resumed_from:
                print(f"resuming from {self.root / self.resumed_from} (step {self.step})")

    # ---- helpers
    def _autocast(self):
        return torch.autocast(self.setup.device, dtype=self.autocast_dtype, enabled=self.setup.precision != "fp32")

    def _check_precision(self, logits: torch.Tensor) -> None:
        if self.ran_precision is None:
            self.ran_precision = PRECISION_OF.get(logits.dtype, str(logits.dtype))
            if self.ran_precision != self.setup.precision:
                raise PipelineError(f"asked for {self.setup.precision} but the model computed in "
                                    f"{self.ran_precision} on {self.setup.device}: set train.precision to one this "
                                    "device runs")

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.setup.device == "cuda":
            return t.pin_memory().to(self.acc.device, non_blocking=True)
        return t

    def _optimizer(self) -> torch.optim.Optimizer:
        # decay the matrices, token and position embeddings included (as GPT-2 reproductions do);
        # biases and LayerNorm gains are 1-D and left alone
        params = [p for p in self.raw.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2), fused=True)


def _read_manifest(tokens: Path) -> dict[str, Any]:
    path = tokens / "manifest.json"
    if not path.is_file():
        raise PipelineError(f"{path} not found: run the tokenize stage first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in ("vocab_size", "eot_token_id", "sha256", "tokenizer_sha256") if k not in manifest]
    if missing:
        raise PipelineError(f"{path} lacks {', '.join(missing)}: rerun the tokenize stage")
    return manifest


@contextmanager
def _signals_caught() -> Iterator[dict[str, int]]:
    """SIGTERM/SIGINT set a flag the loop checks after each step; a second one aborts at once."""
    caught: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught["signum"] = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step and checkpointing (signal again to abort)",
              flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def _json_float(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
