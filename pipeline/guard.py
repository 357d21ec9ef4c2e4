"""The budget held while train runs: the estimate is a prediction, the money is spent now.

After a few steps, and every GUARD_INTERVAL_S after, the train stage projects the run's total
hours, dollars and kWh from its measured rate to the planned tokens, at the estimate's $/h and
kW (reports/cost.json). A projection over a budget by more than cost.budget_tolerance, or the
wall clock past cost.budget_hours, stops the run (checkpointed, exit 3) unless
cost.override_budget is set. Hours spent before a resume count.

The budget reaches train through the cost report, not through params train declares: a finished
run's outputs never depend on the budget (a run it stopped has none), so a budget change must
not retrain, and a run stopped by it resumes when the budget is raised.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import BudgetExceeded
from pipeline.estimate import CostReport

GUARD_FIRST_STEPS = 5     # steps of this run before the first projection: the first ones warm up
GUARD_INTERVAL_S = 120.0  # seconds between projections after that
UNITS = {"hours": "h", "usd": "$", "kwh": "kWh"}


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BudgetGuard:
    def __init__(self, cost: CostReport | None, tolerance: float, tokens_planned: int):
        self.cost, self.tolerance, self.tokens_planned = cost, tolerance, tokens_planned
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
        time outside the optimizer steps (validation) and its $/h and kW."""
        cost = self.cost
        remaining = max(self.tokens_planned - tokens_done, 0)
        outside_steps = cost.hours / cost.step_hours if cost.step_hours else 1.0
        hours = spent_hours + remaining / step_rate / 3600 * outside_steps if step_rate else float("inf")
        projected = {"hours": hours, "usd": hours * (cost.usd / cost.hours if cost.hours else 0.0),
                     "kwh": hours * (cost.kwh / cost.hours if cost.hours else 0.0)}
        over = [k for k, limit in cost.budget.items()
                if limit is not None and projected[k] > limit * (1 + self.tolerance)]
        budget_hours = cost.budget.get("hours")
        self.last = Projection(step=step, tokens_per_second=step_rate, projected=projected, spent_hours=spent_hours,
                               budget=dict(cost.budget), tolerance=self.tolerance, over=over,
                               wall_clock_over=budget_hours is not None and spent_hours >= budget_hours)
        return self.last

    def refusal(self, projection: Projection, checkpoint: str) -> BudgetExceeded:
        p, cost = projection, self.cost
        if p.wall_clock_over:
            what = (f"{p.spent_hours:.4g} h of training reached cost.budget_hours {cost.budget['hours']:g} h, "
                    "a hard wall-clock limit")
        else:
            what = "; ".join(f"{_amount(p.projected[k], k)} projected > cost.budget_{k} {_amount(cost.budget[k], k)}"
                             f" (+{self.tolerance:.0%} tolerance)" for k in p.over)
            what = f"at the measured {p.tokens_per_second:,.0f} tokens/s the run heads over budget: {what}"
        affordable = _affordable_tokens(p, cost, self.tokens_planned)
        fewer = f"fewer tokens (train.max_tokens: {affordable:,} fits at this rate), " if affordable > 0 else ""
        return BudgetExceeded(
            f"train stopped at step {p.step}: {what}. Saved {checkpoint}. Choices: {fewer}a larger budget, "
            "another device (the what-if table in the estimate's cost.md), or cost.override_budget: true; "
            "then rerun and it resumes from the checkpoint")


def _affordable_tokens(p: Projection, cost: CostReport, planned: int) -> int:
    share = min((cost.budget[k] / p.projected[k] for k in UNITS if cost.budget.get(k) and p.projected[k]),
                default=1.0)
    return int(planned * min(share, 1.0)) // cost.tokens_per_step * cost.tokens_per_step


def _amount(value: float, key: str) -> str:
    return f"${value:,.4g}" if key == "usd" else f"{value:,.4g} {UNITS[key]}"
