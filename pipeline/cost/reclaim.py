"""What spot reclaims cost, in one place: the estimate prices a spot run with them and recommends
train.checkpoint_every (pipeline/cost/spot.py), and train's budget guard projects the rest of a
run with the same arithmetic (pipeline/cost/budget.py).

A reclaim takes the VM and its disk. What survives is the newest checkpoint in the bucket
(paths.checkpoints_remote); without one, nothing: the run starts again from step 0. A reclaim
lands, on average, halfway between two surviving checkpoints, so each costs half the interval
between them of work done again, plus the restart (a new VM, the environment, the checkpoint
download), all of it billed.

Reclaims are taken as a Poisson process: expected reclaims = hours x rate, a first-order figure
(the hours the reclaims add are not exposed again: it is low by a share of about rate x hours
lost per reclaim, under 0.1% at the catalog's rates). The checkpoint interval that minimises the
expected loss is Young's (J. W. Young, "A first order approximation to the optimum checkpoint interval", CACM 17(9),
1974; J. T. Daly, "A higher order estimate of the optimum checkpoint interval for restart dumps",
FGCS 22(3), 2006): tau = sqrt(2 x C x M), C the time one checkpoint takes, M the mean time between
reclaims.

Everything here is plain arithmetic on numbers: this module reads no catalog and no params, so
the train stage, which imports it through the budget guard, never reruns for a price edit.
"""
from __future__ import annotations

import math

HOURS_PER_MONTH = 730.0  # 8760 h / 12: the month AWS Spot Instance Advisor's bands are measured over


def reclaims_per_hour(per_month: float) -> float:
    """The hourly rate of a Poisson process under which an instance running a whole month is
    reclaimed at least once with probability `per_month` (a Spot Advisor band, 0.20 for ">20%")."""
    if not 0 <= per_month < 1:
        raise ValueError(f"a share of instances reclaimed in a month is in [0, 1), not {per_month}")
    return -math.log1p(-per_month) / HOURS_PER_MONTH


def surviving_interval_hours(run_hours: float, checkpoint_every_hours: float, remote: bool) -> float:
    """Hours between two checkpoints a reclaim cannot take: those in the bucket, or, with none,
    the start of the run."""
    return min(checkpoint_every_hours, run_hours) if remote else run_hours


def hours_lost_per_reclaim(interval_hours: float, restart_hours: float) -> float:
    """Work since the last surviving checkpoint (half an interval on average) and the restart."""
    return interval_hours / 2 + restart_hours


def expected_reclaims(run_hours: float, per_hour: float) -> float:
    return run_hours * per_hour


def reclaim_hours(run_hours: float, per_hour: float, interval_hours: float, restart_hours: float) -> float:
    """The hours reclaims are expected to add to a run of `run_hours` (billed, like the rest)."""
    return expected_reclaims(run_hours, per_hour) * hours_lost_per_reclaim(interval_hours, restart_hours)


def young_daly_hours(checkpoint_hours: float, mean_hours_between_reclaims: float) -> float:
    """The checkpoint interval that minimises checkpointing plus expected lost work."""
    return math.sqrt(2 * checkpoint_hours * mean_hours_between_reclaims)
