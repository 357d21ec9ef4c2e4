"""The device catalog: pipeline/hardware.yaml plus params.cost.extra_hardware, validated.

    device = get_device(params.cost)       # the target of the run
    devices = catalog(params.cost.extra_hardware)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import PipelineError
from pipeline.params import Cost

CATALOG_FILE = Path(__file__).with_name("hardware.yaml")
GIB = 2**30
PRECISIONS = ("fp32", "fp16", "bf16")


class _Peak(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    fp32: float = Field(gt=0)
    fp16: float = Field(gt=0)
    bf16: float = Field(gt=0)


class _Spec(BaseModel):
    """One catalog entry as written in YAML (human units)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str
    kind: Literal["cpu", "cuda"]
    memory_gib: float = Field(gt=0)
    memory_bandwidth_gbps: float = Field(gt=0)
    peak_tflops: _Peak
    bf16_native: bool
    power_watts: float = Field(gt=0)
    usd_per_hour_on_demand: float | None = Field(gt=0)
    usd_per_hour_spot: float | None = Field(gt=0)
    colab_units_per_hour: float | None = Field(gt=0)
    mfu_default: float = Field(gt=0, le=1)
    runtime_overhead_gib: float = Field(ge=0)
    sources: dict[str, str]


class _Colab(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    usd_per_compute_unit: float = Field(gt=0)
    source: str


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str                         # "cpu" | "cuda"
    memory_bytes: int                 # what a run can allocate on one device
    memory_bandwidth: float           # bytes/s
    peak_flops: dict[str, float]      # dense FLOP/s by precision "fp32" / "fp16" / "bf16"
    bf16_native: bool
    power_watts: float
    usd_per_hour_on_demand: float | None
    usd_per_hour_spot: float | None
    usd_per_hour_colab: float | None  # Colab compute units per hour x price per unit
    mfu_default: float
    runtime_overhead_bytes: int       # CUDA context + library workspaces, or process footprint
    sources: dict[str, str] = field(default_factory=dict)

    def usd_per_hour(self, pricing: str) -> float | None:
        """The catalog price for on_demand / spot / colab; None where not rented that way."""
        return {"on_demand": self.usd_per_hour_on_demand, "spot": self.usd_per_hour_spot,
                "colab": self.usd_per_hour_colab}.get(pricing)


def catalog(extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Device]:
    """Every device: the packaged catalog, then params entries (a known name takes only the fields
    it changes; a new name needs every field)."""
    raw, colab = _packaged()
    entries = {name: dict(spec) for name, spec in raw.items()}
    for name, spec in (extra or {}).items():
        if not isinstance(spec, dict):
            raise PipelineError(f"cost.extra_hardware.{name} must be a mapping of fields "
                                f"(see pipeline/hardware.yaml), not {type(spec).__name__}")
        entries[name] = {**entries.get(name, {}), **spec}
    problems, devices = [], {}
    for name, spec in entries.items():
        where = f"cost.extra_hardware.{name}" if name in (extra or {}) else f"{CATALOG_FILE.name}: {name}"
        try:
            devices[name] = _device(name, _Spec.model_validate(spec), colab)
        except ValidationError as exc:
            problems += [f"{where}.{'.'.join(str(p) for p in e['loc'])}: "
                         f"{'missing' if e['type'] == 'missing' else e['msg']}" for e in exc.errors()]
    if problems:
        raise PipelineError("invalid hardware entries:\n" + "\n".join(f"  - {p}" for p in problems)
                            + "\nFix them (every field of pipeline/hardware.yaml, prices and MFU > 0).")
    return devices


def get_device(cost: Cost) -> Device:
    """The device named by cost.hardware."""
    devices = catalog(cost.extra_hardware)
    if cost.hardware not in devices:
        raise PipelineError(f"cost.hardware: unknown device {cost.hardware!r}; known: {', '.join(devices)} "
                            "(or describe it under cost.extra_hardware)")
    return devices[cost.hardware]


@lru_cache(maxsize=1)
def _packaged() -> tuple[dict[str, Any], _Colab]:
    data = yaml.safe_load(CATALOG_FILE.read_text(encoding="utf-8"))
    return data["devices"], _Colab.model_validate(data["colab"])


def _device(name: str, spec: _Spec, colab: _Colab) -> Device:
    colab_usd = spec.colab_units_per_hour * colab.usd_per_compute_unit if spec.colab_units_per_hour else None
    sources = dict(spec.sources)
    if colab_usd is not None:
        sources["usd_per_hour_colab"] = colab.source
    return Device(
        name=name,
        description=spec.description,
        kind=spec.kind,
        memory_bytes=int(spec.memory_gib * GIB),
        memory_bandwidth=spec.memory_bandwidth_gbps * 1e9,
        peak_flops={p: getattr(spec.peak_tflops, p) * 1e12 for p in PRECISIONS},
        bf16_native=spec.bf16_native,
        power_watts=spec.power_watts,
        usd_per_hour_on_demand=spec.usd_per_hour_on_demand,
        usd_per_hour_spot=spec.usd_per_hour_spot,
        usd_per_hour_colab=colab_usd,
        mfu_default=spec.mfu_default,
        runtime_overhead_bytes=int(spec.runtime_overhead_gib * GIB),
        sources=sources,
    )
