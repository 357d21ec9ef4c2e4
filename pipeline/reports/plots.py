"""The evaluate stage's pictures, in reports/plots/: PNGs (which `dvc plots show` also shows, as
images) and their data as CSV (which it draws: the loss curves and the estimate's errors).

    loss.png / loss_train.csv, loss_val.csv          train and val loss against tokens (step,tokens,loss)
    checkpoints.png / checkpoints.csv                whole-split quality of each evaluated checkpoint
    estimate_vs_actual.png / estimate_vs_actual.csv  error in % of each estimated quantity

Every file is written on every run (a header-only CSV, a PNG saying why it is empty) so the DVC
wiring never points at a missing file. FILES names them all: the Snakefile declares them as the
evaluate stage's outputs, and dvc.yaml's plots point at them (pipeline/tools/dag.py).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.atomic import staging_dir
from pipeline.reports.quantities import QUANTITIES, with_unit

if TYPE_CHECKING:
    from matplotlib.figure import Figure   # imported where drawn: the registry imports FILES

LOSS_PNG, LOSS_TRAIN_CSV, LOSS_VAL_CSV = "loss.png", "loss_train.csv", "loss_val.csv"
CHECKPOINTS_PNG, CHECKPOINTS_CSV = "checkpoints.png", "checkpoints.csv"
ESTIMATE_PNG, ESTIMATE_CSV = "estimate_vs_actual.png", "estimate_vs_actual.csv"
FILES = (LOSS_PNG, LOSS_TRAIN_CSV, LOSS_VAL_CSV, CHECKPOINTS_PNG, CHECKPOINTS_CSV, ESTIMATE_PNG, ESTIMATE_CSV)

_LOSS_FIELDS = ("step", "tokens", "loss")
_CKPT_FIELDS = ("checkpoint", "step", "tokens", "val_loss", "perplexity", "bits_per_byte", "train_val_loss")
_EVA_FIELDS = ("quantity", "estimate", "actual", "error_pct")


def read_live(live_dir: Path, tokens_per_step: int) -> dict[str, Any]:
    """The train stage's train/loss and val/loss from DVCLive (plots/metrics/<name>.tsv: step, value).

    Every optimizer step of the train stage consumes exactly train.tokens_per_step tokens.
    """
    metrics = live_dir / "plots" / "metrics"
    if not metrics.is_dir():
        return {"train": [], "val": [], "note": f"no training curve: {metrics} not found"}
    out: dict[str, Any] = {"note": None}
    for split in ("train", "val"):
        path = metrics / split / "loss.tsv"
        rows = _read_tsv(path) if path.is_file() else []
        out[split] = [(step, step * tokens_per_step, loss) for step, loss in rows]
    if not out["train"] and not out["val"]:
        out["note"] = f"no train/loss or val/loss in {metrics}"
    return out


def _read_tsv(path: Path) -> list[tuple[int, float]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        return []
    value = [k for k in rows[0] if k not in ("step", "timestamp")][-1]
    return [(int(r["step"]), float(r[value])) for r in rows if r.get(value) not in (None, "")]


def write_all(plots_dir: Path, live: dict[str, Any], checkpoints: dict[str, dict[str, Any]],
              eva: dict[str, Any], unigram_loss: float, forecast: dict[str, Any] | None = None) -> None:
    with staging_dir(plots_dir) as out:
        for split, name in (("train", LOSS_TRAIN_CSV), ("val", LOSS_VAL_CSV)):
            _write_csv(out / name, _LOSS_FIELDS, live[split])
        _write_csv(out / CHECKPOINTS_CSV, _CKPT_FIELDS,
                   [(name, *(r[k] for k in _CKPT_FIELDS[1:])) for name, r in checkpoints.items()])
        quantities = (eva.get("quantities") or {}).items()
        _write_csv(out / ESTIMATE_CSV, _EVA_FIELDS,
                   [(n, q["estimate"], q["actual"], q["error_pct"]) for n, q in quantities
                    if q["error_pct"] is not None])
        _loss_png(out / LOSS_PNG, live, checkpoints, unigram_loss, forecast)
        _checkpoints_png(out / CHECKPOINTS_PNG, checkpoints)
        _estimate_png(out / ESTIMATE_PNG, eva)


def _write_csv(path: Path, fields: tuple[str, ...], rows: list[tuple]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


def _figure(title: str, tokens_axis: bool = True) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(9, 4.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if tokens_axis:
        ax.xaxis.set_major_formatter(EngFormatter())  # 40 k, 100 M: token counts span six decades
        ax.set_xlabel("tokens seen")
    return fig, ax


def _empty(ax, note: str) -> None:
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png", metadata={"Software": None})


def _loss_png(path: Path, live: dict[str, Any], checkpoints: dict[str, dict[str, Any]],
              unigram_loss: float, forecast: dict[str, Any] | None = None) -> None:
    fig, ax = _figure("Loss against tokens seen")
    if not live["train"] and not live["val"] and not checkpoints:
        _empty(ax, live["note"] or "no data")
        return _save(fig, path)
    if live["train"]:
        _, x, y = zip(*live["train"])
        ax.plot(x, y, lw=1, alpha=0.8, label="train loss")
    if live["val"]:
        _, x, y = zip(*live["val"])
        ax.plot(x, y, "o-", ms=4, label="val loss (during training, a few batches)")
    points = [(r["tokens"], r["val_loss"]) for r in checkpoints.values() if r["tokens"] is not None]
    if points:
        x, y = zip(*points)
        ax.plot(x, y, "D", ms=7, color="black", label="val loss, whole split (evaluate)")
    if forecast:   # cost.forecast: a run ending at each validation, and its 90% interval
        rows = [r for r in forecast["validations"] if not r["beyond_law"]]
        if rows:
            x = [r["tokens"] for r in rows]
            ax.fill_between(x, [r["low"] for r in rows], [r["high"] for r in rows], color="tab:green", alpha=0.15)
            ax.plot(x, [r["loss"] for r in rows], "--", color="tab:green", label="forecast (estimate), 90% interval")
        floors = [r for r in forecast["validations"] if r["beyond_law"]]
        if floors:   # past the epochs the law covers
            ax.plot([r["tokens"] for r in floors], [r["low"] for r in floors], ":", color="tab:green",
                    label="floor (estimate): no forecast past its epochs")
    ax.axhline(unigram_loss, ls="--", color="gray", label=f"unigram baseline ({unigram_loss:.2f})")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    _save(fig, path)


def _checkpoints_png(path: Path, checkpoints: dict[str, dict[str, Any]]) -> None:
    fig, ax = _figure("Quality across checkpoints (whole val split)")
    rows = [(name, r) for name, r in checkpoints.items() if r["tokens"] is not None]
    if not rows:
        _empty(ax, "no checkpoints evaluated (evaluate.checkpoints is none, or none were kept)")
        return _save(fig, path)
    x = [r["tokens"] for _, r in rows]
    ax.plot(x, [r["val_loss"] for _, r in rows], "o-", label="val loss, whole split")
    during = [(r["tokens"], r["train_val_loss"]) for _, r in rows if r["train_val_loss"] is not None]
    if during:
        ax.plot(*zip(*during), "s--", alpha=0.6, label="val loss during training (a few batches)")
    best_name, best = min(rows, key=lambda row: row[1]["val_loss"])
    ax.plot(best["tokens"], best["val_loss"], "*", ms=16, color="tab:blue", label=f"best: {best_name}")
    for name, r in rows:
        ax.annotate(name, (r["tokens"], r["val_loss"]), textcoords="offset points", xytext=(0, 9),
                    ha="center", fontsize=8)
    ax.margins(x=0.1, y=0.15)
    # bits per byte is val loss times one constant (tokens / bytes / ln 2): a second scale, not a second curve
    _, r0 = rows[0]
    per_nat = r0["bits_per_byte"] / r0["val_loss"]
    ax.secondary_yaxis("right", functions=(lambda v: v * per_nat, lambda b: b / per_nat)).set_ylabel("bits per byte")
    ax.set_ylabel("val loss (nats/token)")
    ax.legend()
    _save(fig, path)


def _estimate_png(path: Path, eva: dict[str, Any]) -> None:
    fig, ax = _figure("Estimate against actual   (red: worse than estimated, green: better)", tokens_axis=False)
    rows = [(n, q) for n, q in (eva.get("quantities") or {}).items() if q["error_pct"] is not None][::-1]
    if not rows:
        _empty(ax, eva.get("note") or "nothing both estimated and measured")
        return _save(fig, path)
    labels, errors, colors = [], [], []
    for name, q in rows:
        unit, label, worse = QUANTITIES[name]
        values = f"{with_unit(q['estimate'], unit)} → {with_unit(q['actual'], unit)}".replace("$", r"\$")
        labels.append(f"{label}\n{values}")  # a bare $ would start matplotlib math text
        errors.append(q["error_pct"])
        colors.append("tab:red" if q["error_pct"] * worse > 0 else "tab:green")
    ax.barh(labels, errors, color=colors)
    ax.axvline(0, color="black", lw=1)
    span = max(abs(e) for e in errors) or 1.0
    ax.set_xlim(-span * 1.3, span * 1.3)
    for i, e in enumerate(errors):
        ax.text(e + math.copysign(span * 0.02, e), i, f"{e:+.1f}%", va="center", ha="left" if e >= 0 else "right")
    ax.set_xlabel("error = (actual - estimate) / estimate, in %")
    _save(fig, path)
