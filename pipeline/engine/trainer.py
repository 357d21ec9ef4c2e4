"""The training loop. `Trainer.fit` reads top to bottom: resume, then step until a stop rule says
so, validating and checkpointing on the way; then the last validation and checkpoint, and the model
shipped. Every decision and measurement is a part of its own:

  training.py    the model, optimizer, LR schedule and step (pipeline/engine/step.py)
  validation.py  the validation loss on a fixed subset
  stopping.py    the stop rules and the divergence rules
  progress.py    where the run is: what the rules judge and a checkpoint restores
  checkpoint/    the checkpoints (manager.py: save, resume, another run's moved aside, the lock)
  meter.py       wall and step time, tokens/s, MFU, memory, energy
  trainlog.py    the progress bar and DVCLive metrics
  report.py      reports/train.json
The train stage hands the loop what it needs of the cost side: the budget guard
(pipeline/cost/budget.py) and where the measured speed is kept (pipeline/cost/calibration.py). The
loop knows them only by the small interfaces below, so the engine stays below cost, which plans
and prices with the engine's parts. accelerate sets up the devices and DDP.
"""
from __future__ import annotations

import math
import signal
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from accelerate import Accelerator
from transformers.utils import CONFIG_NAME

from pipeline.core.atomic import staging_dir
from pipeline.core.params import Params
from pipeline.data.batches import TrainWindows
from pipeline.data.tokens import TRAIN_FILE, VAL_FILE, TokenManifest
from pipeline.engine.checkpoint.manager import CheckpointManager
from pipeline.engine.checkpoint.remote import RemoteCheckpoints
from pipeline.engine.identity import identity, run_id
from pipeline.engine.meter import Meter
from pipeline.engine.plan import Setup
from pipeline.engine.progress import Progress
from pipeline.engine.report import TrainReport, train_report
from pipeline.engine.signals import TrainingInterrupted
from pipeline.engine.stopping import Divergence, DivergenceWatch, TrainingDiverged, improves, stop_reason
from pipeline.engine.trainlog import TrainLog
from pipeline.engine.training import build_training
from pipeline.engine.validation import Validation
from pipeline.model.compute import flops_per_token

OVERFLOW_LINES = 10  # fp16 overflow skips shown on the terminal; all are counted in train.json


class Guard(Protocol):
    """What the loop asks of the budget held while it runs (pipeline/cost/budget.py: BudgetGuard)."""

    last: Any  # the newest projection (its as_dict() goes to train.json), None before the first

    @property
    def active(self) -> bool: ...

    def due(self, steps_this_run: int, run_seconds: float) -> bool: ...

    def project(self, step: int, tokens_done: int, step_rate: float, spent_hours: float) -> Any:
        """A projection of the whole run, whose `over` and `wall_clock_over` say whether it stops."""

    def refusal(self, projection: Any, checkpoint: str) -> Exception: ...


# Keeps a run's measured speed for the next estimate of its shape (pipeline/cost/calibration.py:
# remember): called with the plan's calibration key, run=, mfu=, wall_over_steps=,
# tokens_per_second=, step_seconds= and checkpoint_seconds=.
Remember = Callable[..., object]


class Trainer:
    def __init__(self, params: Params, setup: Setup, accelerator: Accelerator, manifest: TokenManifest,
                 tokens: Path, tokenizer: Any, outputs: dict[str, Path], guard: Guard, *, remember: Remember,
                 estimate: dict[str, Any] | None = None, caught: dict[str, int] | None = None):
        """`guard` holds the budget while the run goes; `remember` keeps its measured speed;
        `estimate`: the cost report this run was gated with; `caught`: the signals caught so far
        (pipeline/engine/signals.py), which the loop checks after every step."""
        self.params, self.setup, self.acc, self.manifest = params, setup, accelerator, manifest
        self.tokenizer, self.out, self.guard, self.estimate = tokenizer, outputs, guard, estimate
        self.remember = remember
        self.caught = caught if caught is not None else {}
        self.cfg = cfg = params.train
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        context, vocab = params.model.context, manifest.vocab_size
        self.windows = TrainWindows(tokens / TRAIN_FILE, context, cfg.tokens_per_step // context, cfg.seed)
        self.validation = Validation(tokens / VAL_FILE, context, cfg.eval_batches * self.windows.seqs_per_step,
                                     setup.micro_batch_size, rank=self.rank, world=self.world)
        self.training = build_training(params, vocab, manifest.eot_token_id, device=accelerator.device,
                                       precision=setup.precision, activation_checkpointing=setup.activation_checkpointing,
                                       compile=setup.compile, prepare=accelerator.prepare)
        remote = params.paths.checkpoints_remote
        self.checkpoints = CheckpointManager(outputs["checkpoints"], cfg.keep_last, accelerator,
                                             identity(params, manifest),
                                             {"setup": asdict(setup), "params": {name: params.section(name) for name in ("model", "train")}},
                                             RemoteCheckpoints(remote, cfg.keep_last, cfg.remote_lease_seconds) if remote else None)
        self.meter = Meter(setup, flops_per_token(params.model, vocab), accelerator.device)
        self.watch = DivergenceWatch(cfg, vocab)
        self.progress = Progress()
        self.log: TrainLog | None = None  # opened by `session`, under the lock
        # as every process agreed after the last step: each stops on the same step, even when a
        # signal reaches one process after the others have shared theirs
        self.time_up = self.over_budget = self.signalled = False

    # ---- the loop
    def fit(self) -> TrainReport:
        """Train until a stop rule says so; the report of the run (also written to reports/train.json)."""
        with self.session():
            while not (reason := self._stop_reason()):
                self.train_step()
                if self.signalled:
                    self._interrupted()
                improved = self.progress.step % self.cfg.eval_every == 0 and self._validate()
                # an improving validation is checkpointed too, so the best weights can always be
                # shipped after early stopping
                if self.progress.step % self.cfg.checkpoint_every == 0 or improved:
                    self._checkpoint()
            if reason == "over_budget":
                self._stopped_over_budget()
            if self.progress.last_eval_step != self.progress.step:
                self._validate()
            if self.checkpoints.last_saved_step != self.progress.step:
                self._checkpoint()
            return self._finish(reason)

    @contextmanager
    def session(self) -> Iterator[None]:
        """The run's lock, resume and log, held around its steps (fit's, or a benchmark's)."""
        with self.checkpoints.locked():
            self.progress = self.checkpoints.resume(self.training) or Progress()
            self._announce()
            self.log = TrainLog(self.out["train_live"], self.acc.is_main_process, self.cfg, self.progress.step)
            try:
                self.log.replay(self.progress.history)
                yield
            finally:
                self.log.close()

    def train_step(self) -> None:
        """One optimizer step: forward and backward, the loss and stop flags agreed by every
        process, the divergence rules, then the update (or its gradients dropped) and the log."""
        progress = self.progress
        self.meter.step_started()
        loss = self._agree(self.training.forward_backward(progress.step, self._batch, self.setup.grad_accum_steps,
                                                          rank=self.rank))
        lr = self.training.lr
        if not math.isfinite(loss):
            progress.counts["nonfinite_steps_skipped"] += 1
        if problem := self.watch.train_loss(loss, progress.step + 1, progress.history["train"]):
            self._diverged(problem)
        update = self.training.finish(apply=math.isfinite(loss))
        if update is not None and not update.applied:
            self._overflowed()
        entry = progress.record_train(loss, lr, update.grad_norm if update else None)
        self.meter.step_done(self.cfg.tokens_per_step)
        with self.meter.timed("log"):
            self.log.train(entry, self.meter.last_rate)

    def _batch(self, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows.batch(self.progress.step, micro, self.rank, self.world, self.setup.micro_batch_size)

    def _agree(self, loss: torch.Tensor) -> float:
        """The step's mean loss over every process, and whether any of them was signalled, ran out of
        train.max_hours or projects over budget (then all stop together): one all-reduce."""
        signalled = float(bool(self.caught))
        over_time = float(bool(self.cfg.max_hours) and self._hours() >= self.cfg.max_hours)
        over_budget = float(self._budget_says_stop())
        flags = [loss] + [torch.tensor(f, device=self.acc.device) for f in (signalled, over_time, over_budget)]
        loss_sum, signalled, over_time, over_budget = self.acc.reduce(torch.stack(flags), "sum").tolist()
        self.time_up, self.over_budget, self.signalled = over_time > 0, over_budget > 0, signalled > 0
        if signalled and not self.caught:
            self.caught["signum"] = signal.SIGTERM  # another rank was signalled
        return loss_sum / self.world

    def _validate(self) -> bool:
        """Validate on the fixed subset; True when it improved on the best so far."""
        progress = self.progress
        with self.meter.timed("eval"):
            loss = self.validation.loss(self.training.raw, self.acc.device, self.setup.precision,
                                        lambda sums: self.acc.reduce(sums, "sum"))
        improved = improves(loss, progress.best_val, self.cfg.min_delta)
        entry = progress.record_val(loss)
        with self.meter.timed("log"):
            self.log.val(entry)
        if problem := self.watch.val_loss(loss, progress.step, progress.best_val):
            self._diverged(problem)
        progress.judge_val(loss, improved)
        return improved

    def _checkpoint(self) -> None:
        progress = self.progress
        meta = {**progress.meta(self.cfg.tokens_per_step, self._hours()),
                "data_position": {"next_step": progress.step, "epochs": self.windows.epochs(progress.step),
                                  "rng": "reseeded every step from (train.seed, step, rank)"}}
        with self.meter.timed("checkpoint"):
            self.checkpoints.save(self.training, progress, meta)

    # ---- stopping
    def _stop_reason(self) -> str | None:
        return stop_reason(self.cfg, step=self.progress.step, last_val=self.progress.last_val,
                           bad_evals=self.progress.bad_evals, time_up=self.time_up, over_budget=self.over_budget)

    def _budget_says_stop(self) -> bool:
        if not (self.guard.active and self.guard.due(self.meter.steps, self.meter.run_seconds())):
            return False
        step = self.progress.step + 1
        projection = self.guard.project(step, step * self.cfg.tokens_per_step, self.meter.tokens_per_second() or 0.0,
                                        self._hours())
        return bool(projection.over or projection.wall_clock_over)

    def _stopped_over_budget(self) -> None:
        self._checkpoint()
        refusal = self.guard.refusal(self.guard.last, str(self.checkpoints.path(self.progress.step)))
        if self.acc.is_main_process:
            self._report("over_budget", stop_message=str(refusal)).write(self.out["train_report"])
            self._learn()
        raise refusal

    def _diverged(self, problem: Divergence) -> None:
        message = problem.message(self.cfg, self.checkpoints.newest_kept(), self.checkpoints.previous_runs)
        if self.acc.is_main_process:
            self._report(problem.reason, stop_message=message).write(self.out["train_report"])
        raise TrainingDiverged(message)

    def _overflowed(self) -> None:
        counts = self.progress.counts
        counts["overflow_steps_skipped"] += 1
        if self.acc.is_main_process and counts["overflow_steps_skipped"] <= OVERFLOW_LINES:
            more = " (further ones are counted in train.json)" if counts["overflow_steps_skipped"] == OVERFLOW_LINES else ""
            self.log.note(f"step {self.progress.step + 1}: fp16 overflow, the loss scaler skipped this update and "
                          f"lowered its scale to {self.training.scaler.get_scale():g}{more}")

    def _interrupted(self) -> None:
        signum = int(self.caught["signum"])
        if self.acc.is_main_process:
            print(f"{signal.Signals(signum).name}: step {self.progress.step} done, checkpointing", flush=True)
        self._checkpoint()
        if self.acc.is_main_process:
            self._learn()
        raise TrainingInterrupted(f"{signal.Signals(signum).name}: stopped after step {self.progress.step} and saved "
                                  f"{self.checkpoints.path(self.progress.step)}; rerun the same command to resume "
                                  "from it", signum)

    # ---- outputs
    def _finish(self, reason: str) -> TrainReport:
        final = self.checkpoints.final_weights(reason, self.progress.step, self.training)
        kwh = self.meter.energy_kwh()
        kwh = self.acc.reduce(torch.tensor(math.nan if kwh is None else kwh, device=self.acc.device), "sum").item()
        report = self._report(reason, final_weights=final, kwh=kwh if math.isfinite(kwh) else None)  # every GPU's, or none
        if self.acc.is_main_process:
            raw = self.training.raw
            with staging_dir(self.out["model"], marker=CONFIG_NAME) as stage:   # what from_pretrained reads first
                raw.config.use_cache = True  # for generate(): training never used the KV cache
                raw.save_pretrained(stage, safe_serialization=True)
                self.tokenizer.save_pretrained(stage)
            report.write(self.out["train_report"])
            self._learn()
        self.acc.wait_for_everyone()
        self.log.done(reason + (f"; models/final holds {final}" if final else ""))
        return report

    def _report(self, reason: str, **outcome: Any) -> TrainReport:
        precision = self._precision()
        return train_report(reason, self.progress, self.setup, self.meter.summary(precision), params=self.params,
                            precision=precision, parameters=self.training.parameters,
                            epochs=self.windows.epochs(self.progress.step), wall_hours=self._hours(),
                            resumed_from=self.checkpoints.resumed_from, checkpoints=self.checkpoints.index(),
                            quarantined=self.checkpoints.quarantined, estimate=self.estimate,
                            budget_guard=self.guard.last.as_dict() if self.guard.last else None, **outcome)

    def _learn(self) -> None:
        """Keep this run's measured MFU for the next estimate of the same shape on this machine."""
        summary, meter = self.meter.summary(self._precision()), self.meter
        if summary["mfu"] and meter.step_seconds:
            self.remember(self.setup.calibration_key, run=run_id(self.params, self.manifest),
                          mfu=summary["mfu"], wall_over_steps=meter.run_seconds() / meter.step_seconds,
                          tokens_per_second=summary["tokens_per_second"], step_seconds=meter.step_seconds,
                          checkpoint_seconds=meter.mean_seconds("checkpoint"))

    def _announce(self) -> None:
        if not self.acc.is_main_process:
            return
        s, model, root = self.setup, self.params.model, self.checkpoints.root
        newton_schulz = getattr(self.training.optimizer, "newton_schulz", None)
        print(f"model: {model.architecture}, {self.training.parameters:,} parameters ({model.n_layer} layers, "
              f"{model.n_embd} wide, context {model.context}, vocab {self.manifest.vocab_size}); optimizer "
              f"{self.cfg.optimizer}" + (f" (Newton-Schulz in {newton_schulz})" if newton_schulz else ""))
        print(f"tokens per step: {s.micro_batch_size} x {s.grad_accum_steps} accumulation x {s.world} "
              f"process(es) x {model.context} = {self.cfg.tokens_per_step:,}; precision {s.precision} on "
              f"{s.device}{self._threads()}; activation checkpointing {s.activation_checkpointing} "
              f"({s.settings_from})")
        if self.checkpoints.resumed_from:
            print(f"resuming from {root / self.checkpoints.resumed_from} (step {self.progress.step})")
        for line in self.checkpoints.quarantined:
            print(f"kept aside as incomplete or corrupt: {root / line}")

    # ---- helpers
    def _hours(self) -> float:
        """Training hours of the whole run: the resumed runs' and this process's."""
        return self.progress.earlier_hours + self.meter.run_hours()

    def _precision(self) -> str:
        """The precision the logits came out in, once a step has run; the plan's before."""
        return self.training.ran_precision or self.setup.precision

    def _threads(self) -> str:
        """On CPU, the threads torch computes with: a scheduler that sets OMP_NUM_THREADS=1 (Snakemake
        does, for a job without `threads:`) halves a 2-core machine's speed without a word."""
        return f" ({torch.get_num_threads()} threads)" if self.setup.device == "cpu" else ""
