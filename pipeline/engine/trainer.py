"""The training engine: the loop, and the parts it calls on (step, stopping rules, checkpoints,
budget guard, meter, log, report).

accelerate sets up devices and DDP; the step itself is pipeline/engine/step.py. The precision
recorded is the dtype the model's logits really came out in.
"""
from __future__ import annotations

import math
import signal
import statistics
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from pipeline.core.atomic import staging_dir
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.core.provenance import record
from pipeline.cost import calibration
from pipeline.cost.budget import BudgetGuard
from pipeline.data.batches import TrainWindows, stack_windows, val_starts
from pipeline.data.tokens import TRAIN_FILE, VAL_FILE, TokenManifest, read_tokens
from pipeline.engine import checkpoint as ckpt
from pipeline.engine.identity import differences, identity, run_id
from pipeline.engine.plan import Setup
from pipeline.engine.report import TrainReport
from pipeline.engine.step import TrainStep, autocast, optimizer_for
from pipeline.engine.trainlog import Meter, TrainLog
from pipeline.model.build import build_model, count_parameters

# Train losses whose median judges a spike: long enough to ride out batch-to-batch noise.
SPIKE_WINDOW = 20



SPIKE_MIN_HISTORY = 5



# A model that predicts uniformly scores ln(vocab); a loss this far above it is a model that is
# confidently wrong about everything: it diverged, whatever its history.
ABSURD_LOSS_FACTOR = 1.5



# A validation this many times the best one so far: the weights left the basin they were in.
VAL_DIVERGENCE_FACTOR = 1.5



OVERFLOW_LINES = 10  # fp16 overflow skips shown on the terminal; all are counted in train.json



class TrainingInterrupted(PipelineError):
    """SIGTERM/SIGINT: the step finished and a checkpoint was written; rerun to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum



class TrainingDiverged(PipelineError):
    """Non-finite, absurd or spiking loss: stopped without saving the suspect weights."""



class Trainer:
    def __init__(self, params: Params, setup: Setup, accelerator: Accelerator, manifest: TokenManifest,
                 tokens: Path, tokenizer, outputs: dict[str, Path], guard: BudgetGuard):
        self.params, self.setup, self.acc, self.manifest = params, setup, accelerator, manifest
        self.tokenizer, self.out, self.guard = tokenizer, outputs, guard
        self.cfg = params.train
        self.root = outputs["checkpoints"]
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.context = params.model.context
        self.vocab = manifest.vocab_size
        self.windows = TrainWindows(tokens / TRAIN_FILE, self.context,
                                    self.cfg.tokens_per_step // self.context, self.cfg.seed)
        self.val_tokens = read_tokens(tokens / VAL_FILE)
        # the subset depends on params alone, so val losses stay comparable across a resume on
        # other hardware (another micro-batch or process count), which early stopping relies on
        val = val_starts(tokens / VAL_FILE, self.context, self.cfg.eval_batches * self.windows.seqs_per_step)
        self.val_mine = val[self.rank::self.world]
        self.caught: dict[str, int] = {}
        self.estimate: dict[str, Any] | None = None  # the cost report this run was gated with

        torch.manual_seed(self.cfg.seed)
        self.raw = build_model(params.model, self.vocab, manifest.eot_token_id).to(accelerator.device)
        self.parameters = count_parameters(self.raw)
        if setup.activation_checkpointing:
            self.raw.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model = accelerator.prepare(torch.compile(self.raw) if setup.compile else self.raw)
        self.step_fn = TrainStep(self.raw, optimizer_for(self.raw, self.cfg), precision=setup.precision,
                                 device=setup.device, grad_clip=self.cfg.grad_clip)
        self.optimizer, self.scaler = self.step_fn.optimizer, self.step_fn.scaler
        horizon = self.cfg.max_steps
        if self.cfg.max_tokens:
            horizon = min(horizon, math.ceil(self.cfg.max_tokens / self.cfg.tokens_per_step))
        self.scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            self.optimizer, self.cfg.warmup_steps, horizon, min_lr=self.cfg.min_lr)
        self.absurd_loss = ABSURD_LOSS_FACTOR * math.log(self.vocab)

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
        self.budget_stop = False
        self.start_step = 0
        self.ran_precision: str | None = None
        self.resumed_from: str | None = None
        self.quarantined: list[str] = []

    # ---- the loop
    def fit(self) -> TrainReport:
        with self._run_lock():
            return self._fit()

    @contextmanager
    def _run_lock(self) -> Iterator[None]:
        """One run per checkpoints directory: rank 0 holds the lock and tells the others whether it got it."""
        lock = ckpt.RunLock(self.root) if self.acc.is_main_process else nullcontext()
        refused: list[str | None] = [None]
        try:
            lock.__enter__()
        except PipelineError as exc:
            refused = [str(exc)]
        if self.world > 1:
            broadcast_object_list(refused)
        if refused[0]:
            raise PipelineError(refused[0])
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    def _fit(self) -> TrainReport:
        self._resume()
        self._announce()
        self.meter = Meter(self.params, self.setup, self.vocab, self.acc.device)
        self.log = TrainLog(self.out["train_live"], self.acc.is_main_process, self.cfg, self.step)
        try:
            self.log.replay(self.history)
            while not (reason := self._stop_reason()):
                self._train_step()
                if self.caught:
                    self._interrupted()
                improved = self.step % self.cfg.eval_every == 0 and self._evaluate()
                # an improving validation is checkpointed too, so the best weights can always be
                # shipped after early stopping
                if self.step % self.cfg.checkpoint_every == 0 or improved:
                    self._checkpoint()
            if reason == "over_budget":
                self._stopped_over_budget()
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
            last = micro == s.grad_accum_steps - 1
            with nullcontext() if last else self.acc.no_sync(self.model):
                loss_sum += self.step_fn.micro(self._to_device(x), self._to_device(y), s.grad_accum_steps,
                                               model=self.model)
            self._check_precision()
        signalled = float(bool(self.caught))
        over_time = float(bool(cfg.max_hours) and self.train_hours + self.meter.run_hours() >= cfg.max_hours)
        over_budget = float(self._budget_says_stop())
        flags = [loss_sum / s.grad_accum_steps] + [torch.tensor(f, device=self.acc.device)
                                                   for f in (signalled, over_time, over_budget)]
        loss_value, signalled, over_time, over_budget = self.acc.reduce(torch.stack(flags), "sum").tolist()
        loss_value /= self.world
        self.time_up = over_time > 0
        self.budget_stop = over_budget > 0  # every rank stops when one projects over budget
        if signalled and not self.caught:
            self.caught["signum"] = signal.SIGTERM  # another rank was signalled

        lr = self.scheduler.get_last_lr()[0]
        grad_norm = None
        if not math.isfinite(loss_value):
            self.step_fn.discard()
            self.nonfinite_in_row += 1
            self.counts["nonfinite_steps_skipped"] += 1
            if self.nonfinite_in_row >= cfg.max_nonfinite_steps:
                self._diverged("nonfinite_loss", f"the training loss was non-finite for {self.nonfinite_in_row} "
                                                 f"steps in a row (step {self.step + 1})")
        else:
            self.nonfinite_in_row = 0
            self._check_loss(loss_value)
            update = self.step_fn.update()
            if not update.applied:
                self._overflowed()
            grad_norm = update.grad_norm
        self.scheduler.step()
        self.step += 1
        entry = {"step": self.step, "loss": _json_float(loss_value), "lr": lr, "grad_norm": _json_float(grad_norm)}
        self.history["train"].append(entry)
        self.meter.step_done(self.cfg.tokens_per_step)
        with self.meter.timed("log"):
            self.log.train(entry, self.meter)

    def _evaluate(self) -> bool:
        """Validate on the fixed subset; True when it improved on the best so far."""
        self.raw.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.acc.device)
        with torch.no_grad(), self.meter.timed("eval"):
            for i in range(0, len(self.val_mine), self.setup.micro_batch_size):
                x, y = stack_windows(self.val_tokens, self.val_mine[i:i + self.setup.micro_batch_size], self.context)
                x, y = self._to_device(x), self._to_device(y)
                with autocast(self.setup.device, self.setup.precision):
                    logits = self.raw(input_ids=x, use_cache=False).logits
                    total[0] += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").double()
                total[1] += y.numel()
                del logits, x, y
        self.raw.train()
        if self.setup.device == "cuda":
            torch.cuda.empty_cache()
        loss_sum, count = self.acc.reduce(total, "sum").tolist()
        val = loss_sum / count
        self.last_eval_step = self.step
        improved = val < self.best_val - self.cfg.min_delta
        entry = {"step": self.step, "loss": _json_float(val), "perplexity": _json_float(_exp(val))}
        self.history["val"].append(entry)
        with self.meter.timed("log"):
            self.log.val(entry)
        self._check_val(val)
        if improved:
            self.best_val, self.bad_evals = val, 0
        else:
            self.bad_evals += 1
        return improved

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
        if self.budget_stop:
            return "over_budget"
        return None

    def _budget_says_stop(self) -> bool:
        if not (self.guard.active and self.guard.due(self.step - self.start_step, self.meter.run_seconds())):
            return False
        projection = self.guard.project(self.step + 1, (self.step + 1) * self.cfg.tokens_per_step,
                                        self.meter.tokens_per_second() or 0.0,
                                        self.train_hours + self.meter.run_hours())
        return bool(projection.over or projection.wall_clock_over)

    def _stopped_over_budget(self) -> None:
        self._checkpoint()
        refusal = self.guard.refusal(self.guard.last, str(self.root / ckpt.dirname(self.step)))
        if self.acc.is_main_process:
            self._report("over_budget", stop_message=str(refusal)).write(self.out["train_report"])
            self._learn()
        raise refusal

    def _check_loss(self, loss: float) -> None:
        """A finite loss can still say the run diverged: far above a uniform guess, or a spike over
        the median of the recent losses (a median, so one earlier bad step does not hide the next)."""
        recent = [e["loss"] for e in self.history["train"][-SPIKE_WINDOW:] if e["loss"] is not None]
        if len(recent) >= SPIKE_MIN_HISTORY:
            baseline = statistics.median(recent)
            if loss > self.cfg.loss_spike_factor * baseline:
                self._diverged("loss_spike", f"the training loss jumped to {loss:.3f} at step {self.step + 1}, over "
                                             f"train.loss_spike_factor={self.cfg.loss_spike_factor} x the median "
                                             f"{baseline:.3f} of the last {len(recent)} steps")
        if loss > self.absurd_loss:
            self._diverged("loss_absurd", f"the training loss reached {loss:.3f} at step {self.step + 1}, above "
                                          f"{ABSURD_LOSS_FACTOR} x ln(vocab {self.vocab}) = {self.absurd_loss:.2f}, "
                                          "worse than guessing uniformly")

    def _check_val(self, val: float) -> None:
        if not math.isfinite(val) or val > self.absurd_loss:
            self._diverged("val_loss_absurd", f"the validation loss was {val:.4g} at step {self.step}, above "
                                              f"{ABSURD_LOSS_FACTOR} x ln(vocab) = {self.absurd_loss:.2f}")
        if math.isfinite(self.best_val) and val > VAL_DIVERGENCE_FACTOR * self.best_val:
            self._diverged("val_loss_diverged", f"the validation loss rose to {val:.4f} at step {self.step}, over "
                                                f"{VAL_DIVERGENCE_FACTOR} x the best so far ({self.best_val:.4f})")

    def _diverged(self, reason: str, what: str) -> None:
        kept = ckpt.steps(self.root)
        keep = (f"the checkpoints before it are intact (newest {kept[-1][1]})" if kept
                else "no checkpoint was written yet")
        message = (f"training diverged: {what}; {keep}. Lower train.lr (it is {self.cfg.lr:g}) or raise "
                   f"train.warmup_steps (it is {self.cfg.warmup_steps}): that starts a new run, and the old "
                   f"checkpoints move to {self.root / 'previous-runs'}. With train.precision fp16, a rerun in fp32 "
                   "or bf16 resumes from the last good checkpoint")
        if self.acc.is_main_process:
            self._report(reason, stop_message=message).write(self.out["train_report"])
        raise TrainingDiverged(message)

    def _overflowed(self) -> None:
        self.counts["overflow_steps_skipped"] += 1
        if self.acc.is_main_process and self.counts["overflow_steps_skipped"] <= OVERFLOW_LINES:
            more = " (further ones are counted in train.json)" if self.counts["overflow_steps_skipped"] == OVERFLOW_LINES else ""
            self.log.note(f"step {self.step + 1}: fp16 overflow, the loss scaler skipped this update and lowered "
                          f"its scale to {self.scaler.get_scale():g}{more}")

    def _interrupted(self) -> None:
        signum = int(self.caught["signum"])
        self._checkpoint()
        if self.acc.is_main_process:
            self._learn()
        name = signal.Signals(signum).name
        raise TrainingInterrupted(f"{name}: stopped after step {self.step} and saved "
                                  f"{self.root / ckpt.dirname(self.step)}; rerun the same command to resume "
                                  "from it", signum)

    # ---- checkpoints
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
                "identity": identity(self.params, self.manifest),
                "setup": asdict(self.setup),
                "params": {name: self.params.section(name) for name in ("model", "train")},
            }
            states = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            if self.scaler.is_enabled():
                states["scaler"] = self.scaler.state_dict()
            with self.meter.timed("checkpoint"):
                ckpt.save(self.root, self.step, self.raw, states, meta, self.history)
                ckpt.prune_and_index(self.root, self.cfg.keep_last)
            self.quarantined = ckpt.quarantined(self.root)
        self.acc.wait_for_everyone()
        self.last_ckpt_step = self.step

    def _resume(self) -> None:
        found: list[Any] = [None]
        if self.acc.is_main_process:
            ckpt.clean_leftovers(self.root)
            path = ckpt.newest_valid(self.root)
            if path and (diff := differences(ckpt.read_meta(path)["identity"], identity(self.params, self.manifest))):
                # another run's checkpoints (a changed lr, model or corpus): keep them, start afresh
                aside = ckpt.archive(self.root, f"{path.name} came from a different run: {diff}")
                print(f"WARNING: {path} comes from a different run ({diff}): moved the old checkpoints "
                      f"to {aside} (delete it when you no longer need it) and starting afresh",
                      file=sys.stderr)
                path = None
            found = [str(path) if path else None]
            if path:
                ckpt.prune_and_index(self.root, self.cfg.keep_last)  # drop what was moved aside
            self.quarantined = ckpt.quarantined(self.root)
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
        self.start_step = self.step

    # ---- outputs
    def _finish(self, reason: str) -> TrainReport:
        final = self._final_weights(reason)
        kwh = self.meter.energy_kwh()
        kwh = self.acc.reduce(torch.tensor(math.nan if kwh is None else kwh, device=self.acc.device), "sum").item()
        report = self._report(reason, final_weights=final, kwh=kwh if math.isfinite(kwh) else None)  # every GPU's, or none
        if self.acc.is_main_process:
            with staging_dir(self.out["model"]) as stage:
                self.raw.config.use_cache = True  # for generate(): training never used the KV cache
                self.raw.save_pretrained(stage, safe_serialization=True)
                self.tokenizer.save_pretrained(stage)
            report.write(self.out["train_report"])
            self._learn()
        self.acc.wait_for_everyone()
        self.log.done(reason + (f"; models/final holds {final}" if final else ""))
        return report

    def _learn(self) -> None:
        """Keep this run's measured MFU for the next estimate of the same shape on this machine."""
        summary = self.meter.summary(self.ran_precision or self.setup.precision)
        if summary["mfu"] and self.meter.step_seconds:
            calibration.remember(self.setup.calibration_key, run=run_id(self.params, self.manifest),
                                 mfu=summary["mfu"], wall_over_steps=self.meter.run_seconds() / self.meter.step_seconds,
                                 tokens_per_second=summary["tokens_per_second"], step_seconds=self.meter.step_seconds)

    def _final_weights(self, reason: str) -> str | None:
        """After early stopping the run's best checkpoint is shipped, not the weights that stopped
        improving; otherwise the last weights (which the last checkpoint holds)."""
        best = ckpt.best_entry(self.root)
        if reason != "early_stopping" or best is None or best["step"] == self.step:
            return ckpt.dirname(self.step)
        ckpt.load_weights(self.raw, self.root / best["dir"])
        return f"{best['dir']} (best)"

    def _report(self, reason: str, *, stop_message: str | None = None, final_weights: str | None = None,
                kwh: float | None = None) -> TrainReport:
        losses = [e["loss"] for e in self.history["train"] if e["loss"] is not None]
        precision = self.ran_precision or self.setup.precision
        summary = self.meter.summary(precision)
        return TrainReport.make(
            steps=self.step, tokens=self.step * self.cfg.tokens_per_step, epochs=self.windows.epochs(self.step),
            stop_reason=reason, stop_message=stop_message, resumed_from=self.resumed_from,
            final_weights=final_weights, wall_hours=self.train_hours + self.meter.run_hours(),
            **summary, kwh=kwh, kwh_source="nvml_total_energy" if kwh is not None else None,
            precision=precision, device=self.setup.device, parameters=self.parameters,
            **{k: v for k, v in asdict(self.setup).items()
               if k not in ("device", "precision", "device_name", "peak_flops", "calibration_key")},
            loss={"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                  "min": min(losses) if losses else None, "val": self.history["val"],
                  "best_val": _json_float(self.best_val)},
            **self.counts, quarantined_checkpoints=self.quarantined,
            estimate=self.estimate, budget_guard=self.guard.last.as_dict() if self.guard.last else None,
            checkpoints=ckpt.read_index(self.root),
            **record({"model": self.params.section("model"), "train": self.params.section("train")}),
        )

    def _announce(self) -> None:
        s = self.setup
        if self.acc.is_main_process:
            newton_schulz = getattr(self.optimizer, "newton_schulz", None)
            print(f"model: {self.params.model.architecture}, {self.parameters:,} parameters "
                  f"({self.params.model.n_layer} layers, {self.params.model.n_embd} wide, context {self.context}, "
                  f"vocab {self.vocab}); optimizer {self.cfg.optimizer}"
                  + (f" (Newton-Schulz in {newton_schulz})" if newton_schulz else ""))
            print(f"tokens per step: {s.micro_batch_size} x {s.grad_accum_steps} accumulation x {s.world} "
                  f"process(es) x {self.context} = {self.cfg.tokens_per_step:,}; precision {s.precision} on "
                  f"{s.device}{self._threads()}; activation checkpointing {s.activation_checkpointing} "
                  f"({s.settings_from})")
            if self.resumed_from:
                print(f"resuming from {self.root / self.resumed_from} (step {self.step})")
            for line in self.quarantined:
                print(f"kept aside as incomplete or corrupt: {self.root / line}")

    # ---- helpers
    def _threads(self) -> str:
        """On CPU, the threads torch computes with: a scheduler that sets OMP_NUM_THREADS=1 (Snakemake
        does, for a job without `threads:`) halves a 2-core machine's speed without a word."""
        return f" ({torch.get_num_threads()} threads)" if self.setup.device == "cpu" else ""

    def _check_precision(self) -> None:
        if self.ran_precision is None:
            self.ran_precision = self.step_fn.ran_precision
            if self.ran_precision != self.setup.precision:
                raise PipelineError(f"asked for {self.setup.precision} but the model computed in "
                                    f"{self.ran_precision} on {self.setup.device}: set train.precision to one this "
                                    "device runs")

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.setup.device == "cuda":
            return t.pin_memory().to(self.acc.device, non_blocking=True)
        return t



def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf



def _json_float(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
