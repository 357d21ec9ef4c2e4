"""On-demand, spot, and spot with its expected reclaims, side by side, and the checkpoint interval
that suits the reclaim rate: the estimate's `spot` figures (reports/cost.json, cost.md).

The reclaim arithmetic is pipeline/cost/reclaim.py's; this module finds its inputs: the catalog's
rate and restart time, the checkpoint's size (pipeline/model/compute.py) and what writing and
uploading it takes, measured by an earlier train run of this shape (pipeline/cost/calibration.py)
or predicted from the catalog's disk and bucket bandwidths.
"""
from __future__ import annotations

from typing import Any

from pipeline.core.params import Params
from pipeline.cost import hardware, reclaim
from pipeline.cost.calibration import Learned
from pipeline.cost.hardware import Device
from pipeline.model import compute

FAR_OFF = 2.0  # a configured checkpoint_every this many times off the recommendation is pointed out


def checkpoint_cost(size: int, remote: bool, learned: Learned | None) -> tuple[float, str]:
    """Seconds one checkpoint takes, the Young/Daly C: written (measured by an earlier run, or at
    the catalog's disk bandwidth) and, with a bucket, uploaded; and where that came from."""
    store = hardware.storage()
    upload = size / store.bucket_bytes_per_s if remote else 0.0
    and_upload = f" + {upload:.3g} s to upload it at {store.bucket_bytes_per_s / 1e6:g} MB/s (storage.bucket_mb_per_s)"
    if learned is not None and learned.checkpoint_seconds:
        return (learned.checkpoint_seconds + upload,
                f"measured: {learned.checkpoint_seconds:.3g} s per checkpoint written by an earlier train run of this "
                f"shape on this machine at {learned.measured_at}" + (and_upload if remote else ""))
    write = size / store.disk_write_bytes_per_s
    return (write + upload, f"predicted: {size / 1e6:,.0f} MB written at {store.disk_write_bytes_per_s / 1e6:g} MB/s "
                            f"(storage.disk_write_mb_per_s) = {write:.3g} s" + (and_upload if remote else ""))


def side_by_side(params: Params, device: Device, figures: dict[str, Any], steps: int, vocab: int,
                 learned: Learned | None) -> dict[str, Any] | None:
    """The run at on-demand and spot prices and at spot with its expected reclaims, and the
    checkpoint interval Young/Daly recommends; None where the device has no spot price."""
    spot_usd_per_hour, devices = device.usd_per_hour("spot"), device.priced(params.cost.num_devices)
    if spot_usd_per_hour is None or device.spot_reclaims_per_month is None or not steps:
        return None
    hours, remote = figures["hours"], params.paths.checkpoints_remote is not None
    step_hours = hours / steps                              # validation included: the wall clock
    size = compute.checkpoint_bytes(params.model, vocab, params.train.optimizer)
    checkpoint_seconds, checkpoint_source = checkpoint_cost(size, remote, learned)
    per_hour = reclaim.reclaims_per_hour(device.spot_reclaims_per_month)
    # a new VM resumes from the bucket after downloading the checkpoint; with none it starts afresh
    restart_hours = device.spot_restart_minutes / 60 + (size / hardware.storage().bucket_bytes_per_s / 3600 if remote else 0)
    interval = reclaim.surviving_interval_hours(hours, params.train.checkpoint_every * step_hours, remote)
    added = reclaim.reclaim_hours(hours, per_hour, interval, restart_hours)
    tau = reclaim.young_daly_hours(checkpoint_seconds / 3600, 1 / per_hour)
    on_demand = device.usd_per_hour("on_demand")
    return {
        "hours": hours, "usd_on_demand": on_demand * devices * hours if on_demand is not None else None,
        "usd_spot": spot_usd_per_hour * devices * hours,
        "usd_spot_with_reclaims": spot_usd_per_hour * devices * (hours + added),
        "hours_spot_with_reclaims": hours + added,
        "reclaims_per_month": device.spot_reclaims_per_month, "reclaims_per_hour": per_hour,
        "mean_hours_between_reclaims": 1 / per_hour,
        "expected_reclaims": reclaim.expected_reclaims(hours, per_hour),
        "hours_lost_per_reclaim": reclaim.hours_lost_per_reclaim(interval, restart_hours),
        "restart_hours": restart_hours, "checkpoints_remote": remote,
        "steps": steps, "checkpoint_every": params.train.checkpoint_every, "checkpoint_interval_hours": interval,
        "checkpoint_bytes": size, "checkpoint_seconds": checkpoint_seconds,
        "checkpoint_seconds_source": checkpoint_source,
        "young_daly_hours": tau, "checkpoint_every_recommended": max(1, round(tau / step_hours)),
        "sources": {k: device.sources.get(k, "") for k in hardware.SPOT_FIELDS},
    }


def gated(figures: dict[str, Any], spot: dict[str, Any] | None, pricing: str) -> dict[str, Any]:
    """The figures the budget gate holds against the budgets: under spot pricing, with the
    expected reclaims' hours and dollars."""
    if pricing != "spot" or spot is None or not figures["hours"]:
        return figures
    share = spot["hours_spot_with_reclaims"] / figures["hours"]
    return {**figures, "hours": figures["hours"] * share, "usd": figures["usd"] * share}


def advice(spot: dict[str, Any]) -> str:
    """One line on train.checkpoint_every against the Young/Daly interval."""
    every, best = spot["checkpoint_every"], spot["checkpoint_every_recommended"]
    if not spot["checkpoints_remote"]:
        return ("no paths.checkpoints_remote: a reclaim takes the VM's disk and every checkpoint on it, so the "
                "run starts again from step 0 (priced so above); set a bucket to resume")
    if best >= spot["steps"]:
        return (f"longer than the run's {spot['steps']:,} steps: at this reclaim rate the checkpoints in between "
                f"guard against other failures, not reclaims (train.checkpoint_every {every})")
    if best > every * FAR_OFF or every > best * FAR_OFF:
        return (f"train.checkpoint_every {every} is far from the {best} recommended: "
                f"{'more checkpoints than reclaims warrant' if best > every else 'more work lost per reclaim than needed'}")
    return f"train.checkpoint_every {every} is close to the {best} recommended"
