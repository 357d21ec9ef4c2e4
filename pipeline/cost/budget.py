"""The budget, in one place: the limits (cost.budget_usd, budget_hours, budget_kwh), the gate the
estimate stage holds the predicted run against, the guard that holds the running one, and the
tokens that would fit.

The guard: the estimate is a prediction, the money is spent while train runs.

After a few steps, and every GUARD_INTERVAL_S after, the train stage projects the run's total
hours, dollars and kWh from its measured rate to the planned tokens, at the estimate's $/h and
kW (reports/cost.json); under spot pricing with the hours the rest of the run's expected
reclaims add (pipeline/cost/reclaim.py, as the estimate priced them). A projection over a budget
by more than cost.budget_tolerance, or the wall clock past cost.budget_hours, stops the run
(checkpointed, exit 3) unless cost.override_budget is set. Hours spent before a resume count, and
so do the hours, $ and kWh the estimate's pilot runs spent (cost.forecast, in reports/cost.json): the
estimate held the run and its pilots together against the budget, and so does the guard.

The budget and its tolerance reach train through the cost report, not through params train
declares: a finished run's outputs never depend on the budget (a run it stopped has none), so a
budget change must not retrain, and a run stopped by it resumes when the budget is raised.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.core.errors import BudgetExceeded
from pipeline.core.params import Cost, Params
from pipeline.core.units import fmt
from pipeline.cost import reclaim
from pipeline.cost.report import CostReport

GUARD_FIRST_STEPS = 5     # steps of this run before the first projection: the first ones warm up
GUARD_INTERVAL_S = 120.0  # seconds between projections after that
UNITS = {"usd": "$", "hours": "h", "kwh": "kWh"}


def limits(cost: Cost) -> dict[str, float | None]:
    """The budgets by figure: {"usd": ..., "hours": ..., "kwh": ...}, None where unset."""
    return {"usd": cost.budget_usd, "hours": cost.budget_hours, "kwh": cost.budget_kwh}


def has_budget(cost: Cost) -> bool:
    return any(v is not None for v in limits(cost).values())


def tokens_to_train(params: Params) -> int:
    """max_steps x tokens_per_step, capped by max_tokens (the train stage stops at whichever comes first)."""
    train = params.train
    tokens = train.max_steps * train.tokens_per_step
    return min(tokens, train.max_tokens) if train.max_tokens else tokens


def affordable_tokens(planned: int, figures: dict[str, float], budget: dict[str, float | None],
                      tokens_per_step: int) -> int:
    """The whole steps' tokens that keep every figure within its budget, at the same cost per token."""
    share = min((budget[k] / figures[k] for k in UNITS if budget.get(k) and figures.get(k)), default=1.0)
    return int(planned * min(share, 1.0)) // tokens_per_step * tokens_per_step


def affordable_after_pilots(planned: int, figures: dict[str, float], budget: dict[str, float | None],
                            pilots: dict[str, float], tokens_per_step: int) -> int:
    """affordable_tokens for figures that include the forecast's pilots: they were spent whatever
    the run does, so the run's share is of what they left of the budget."""
    left = {k: None if v is None else v - pilots[k] for k, v in budget.items()}
    run = {k: figures[k] - pilots[k] for k in UNITS}
    return affordable_tokens(planned, run, left, tokens_per_step)


# ---- the gate: the estimate stage -------------------------------------------------------------

def over_budget(cost: Cost, figures: dict[str, Any]) -> list[str]:
    return [k for k, limit in limits(cost).items() if limit is not None and figures[k] > limit]


def gate_refusal(params: Params, figures: dict[str, Any], over: list[str], *, device: str,
                 alternatives: list[dict[str, Any]], spot_usd: float | None, cost_md: str,
                 pilots: dict[str, float]) -> str | None:
    """The message that stops the pipeline over budget, or None when the run may go ahead.
    figures: the run's with the forecast's pilots (`pilots`, spent whatever the run does);
    alternatives: the what-if rows of other devices at this scale; spot_usd: this run at the
    device's spot price, where it is rented on demand and has one."""
    if not over or params.cost.override_budget:
        return None
    budget = limits(params.cost)
    names = {k: f"cost.budget_{k}" for k in UNITS}
    broken = "; ".join(" > {} ".join(_side_by_side(figures[k], budget[k], UNITS[k])).format(names[k]) for k in over)
    fewer = affordable_after_pilots(tokens_to_train(params), figures, {k: budget[k] for k in over}, pilots,
                                    params.train.tokens_per_step)
    options = [f"fewer tokens (train.max_tokens: {fewer} fits)" if fewer > 0 else "far fewer tokens",
               "a smaller model"]
    cheaper = [f"{r['device']} ({fmt(r['hours'], 'h')}, {fmt(r['usd'], '$')}, {r['pricing']})"
               for r in alternatives if r["fits"] and all(r[k] <= v for k, v in budget.items() if v is not None)]
    if cheaper:
        options.append("a device within budget: " + ", ".join(cheaper))
    if spot_usd is not None:
        options.append(f"spot pricing (cost.pricing: spot: {fmt(spot_usd, '$')})")
    return (f"over budget on {device} ({figures['usd_basis']}): {broken}. Change: " + "; ".join(options)
            + f"; or cost.override_budget: true to run anyway. See {cost_md}.")


def _side_by_side(value: float, limit: float, unit: str) -> tuple[str, str]:
    """A figure and the limit it broke, with digits enough to tell them apart ($0.0042 > $0.004,
    never <$0.01 > <$0.01)."""
    decimals = 2
    while decimals < 9 and round(value, decimals) == round(limit, decimals) or round(value, decimals) == 0:
        decimals += 1
        if decimals >= 9:
            break
    text = [f"{x:,.{decimals}f}" for x in (value, limit)]
    return tuple({"$": f"${t}", "h": f"{t} h", "kWh": f"{t} kWh"}[unit] for t in text)


# ---- the guard: the train stage ---------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    step: int
    tokens_per_second: float        # optimizer steps alone, as measured
    projected: dict[str, float]     # hours, usd, kwh of the whole run, spent and to come
    spent_hours: float
    budget: dict[str, float | None]
    tolerance: float
    over: list[str]                 # the budgets the projection breaks (beyond the tolerance)
    wall_clock_over: bool           # cost.budget_hours already spent
    reclaim_hours: float = 0.0      # in `projected`: what the rest of the run's expected spot reclaims add
    pilots: dict[str, float] = field(default_factory=dict)   # in `projected`: what the forecast's pilots spent

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BudgetGuard:
    def __init__(self, cost: CostReport | None, tokens_planned: int):
        self.cost, self.tokens_planned = cost, tokens_planned
        self.pilots = pilots_spent(cost)
        self.last: Projection | None = None
        self._next_check_at: float | None = None

    @property
    def active(self) -> bool:
        return self.cost is not None and not self.cost.override_budget and any(v for v in self.cost.budget.values())

    def due(self, steps_this_run: int, run_seconds: float) -> bool:
        if steps_this_run < GUARD_FIRST_STEPS:
            return False
        if self._next_check_at is None or run_seconds >= self._next_check_at:
            self._next_check_at = run_seconds + GUARD_INTERVAL_S
            return True
        return False

    def project(self, step: int, tokens_done: int, step_rate: float, spent_hours: float) -> Projection:
        """The run's totals if the rest goes at `step_rate` tokens/s, with the estimate's share of
        time outside the optimizer steps (validation), its $/h and kW, and under spot pricing the
        hours the rest of the run's expected reclaims add (as the gate priced them)."""
        cost = self.cost
        remaining = max(self.tokens_planned - tokens_done, 0)
        outside_steps = cost.hours / cost.step_hours if cost.step_hours else 1.0
        to_come = remaining / step_rate / 3600 * outside_steps if step_rate else float("inf")
        reclaims = self._reclaims(to_come, spent_hours + to_come, step_rate * 3600 / outside_steps) if step_rate else 0.0
        hours = spent_hours + to_come + reclaims
        run = {"hours": hours, "usd": hours * (cost.usd / cost.hours if cost.hours else 0.0),
               "kwh": hours * (cost.kwh / cost.hours if cost.hours else 0.0)}
        projected = {k: self.pilots[k] + run[k] for k in UNITS}
        over = [k for k, limit in cost.budget.items()
                if limit is not None and projected[k] > limit * (1 + cost.budget_tolerance)]
        budget_hours = cost.budget.get("hours")
        self.last = Projection(step=step, tokens_per_second=step_rate, projected=projected, spent_hours=spent_hours,
                               budget=dict(cost.budget), tolerance=cost.budget_tolerance, over=over,
                               wall_clock_over=budget_hours is not None
                               and self.pilots["hours"] + spent_hours >= budget_hours,
                               reclaim_hours=reclaims, pilots=dict(self.pilots))
        return self.last

    def _reclaims(self, to_come: float, run_hours: float, tokens_per_hour: float) -> float:
        """Under spot pricing, the hours the rest of the run's expected reclaims add, with the
        estimate's reclaim rate and restart time (reports/cost.json) and the checkpoint interval at
        the measured rate: the arithmetic the estimate priced the run with (pipeline/cost/reclaim.py)."""
        spot = self.cost.spot
        if self.cost.pricing != "spot" or not spot:
            return 0.0
        every_hours = spot["checkpoint_every"] * self.cost.tokens_per_step / tokens_per_hour
        interval = reclaim.surviving_interval_hours(run_hours, every_hours, spot["checkpoints_remote"])
        return reclaim.reclaim_hours(to_come, spot["reclaims_per_hour"], interval, spot["restart_hours"])

    def refusal(self, projection: Projection, checkpoint: str) -> BudgetExceeded:
        p, cost = projection, self.cost
        if p.wall_clock_over:
            pilots = f" and {self.pilots['hours']:.4g} h of the forecast's pilots" if self.pilots["hours"] else ""
            what = (f"{p.spent_hours:.4g} h of training{pilots} reached cost.budget_hours {cost.budget['hours']:g} h, "
                    "a hard wall-clock limit")
        else:
            what = "; ".join(f"{_amount(p.projected[k], k)} projected{self._with_pilots(k)} > cost.budget_{k} "
                             f"{_amount(cost.budget[k], k)} (+{p.tolerance:.0%} tolerance)" for k in p.over)
            what = f"at the measured {p.tokens_per_second:,.0f} tokens/s the run heads over budget: {what}"
        affordable = affordable_after_pilots(self.tokens_planned, p.projected, cost.budget, self.pilots,
                                             cost.tokens_per_step)
        fewer = f"fewer tokens (train.max_tokens: {affordable:,} fits at this rate), " if affordable > 0 else ""
        return BudgetExceeded(
            f"train stopped at step {p.step}: {what}. Saved {checkpoint}. Choices: {fewer}a larger budget, "
            "another device (the what-if table in the estimate's cost.md), or cost.override_budget: true; "
            "then rerun and it resumes from the checkpoint")

    def _with_pilots(self, key: str) -> str:
        spent = self.pilots[key]
        return f" (the forecast's pilots' {_amount(spent, key)} included)" if spent else ""


def pilots_spent(cost: CostReport | None) -> dict[str, float]:
    """The hours, $ and kWh the estimate's pilot runs spent (reports/cost.json's forecast block);
    zero without a forecast."""
    spent = ((cost.forecast if cost else None) or {}).get("pilots") or {}
    return {k: float(spent.get(k, 0.0)) for k in UNITS}


def _amount(value: float, key: str) -> str:
    return f"${value:,.4g}" if key == "usd" else f"{value:,.4g} {UNITS[key]}"
