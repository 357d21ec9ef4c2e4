"""The device catalog: pipeline/cost/hardware.yaml plus params.cost.extra_hardware, validated.

    device = get_device(params.cost)       # the target of the run
    devices = catalog(params.cost.extra_hardware)
    gpu_offers("NVIDIA L4")                # {"l4-24gb": ..., "l4-24gb-gcp": ...}: the GPU a driver reports
    gpu_entry("NVIDIA L4", prefer="l4-24gb-gcp")   # one of them: cost.hardware where it is one

The file keeps a device (specs, the names its driver reports) apart from the offers that rent it
(cloud, instance, prices, reclaims), and a source cited by several entries in one table. An entry
here is what cost.hardware names: an offer with its device's fields, or a device no offer rents
(owned); Device.chip names the device under either.

An entry with `detect: true` (the packaged `cpu`) is this machine: the DETECTED fields it does not
set come from pipeline.cost.cpuinfo when the entry is built, never at import, and Device.detected
records what was found and how.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.cost import cpuinfo
from pipeline.core.errors import PipelineError
from pipeline.core.params import Cost

CATALOG_FILE = Path(__file__).with_name("hardware.yaml")
from pipeline.core.units import GIB  # noqa: E402
PRECISIONS = ("fp32", "fp16", "bf16")
DETECTED = ("description", "memory_gib", "peak_tflops", "bf16_native")
SPOT_FIELDS = ("spot_reclaims_per_month", "spot_restart_minutes")
OFFER_FIELDS = ("cloud", "instance", "usd_per_hour_on_demand", "usd_per_hour_spot", *SPOT_FIELDS)
NOT_RENTED = {"usd_per_hour_on_demand": None, "usd_per_hour_spot": None}  # an owned device; an offer's missing price


class _Peak(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    fp32: float = Field(gt=0)
    fp16: float = Field(gt=0)
    bf16: float = Field(gt=0)


class _Spec(BaseModel):
    """One catalog entry, an offer over its device or a device owned, in human units."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    detect: bool = False                # fill the DETECTED fields not given from this machine
    description: str
    kind: Literal["cpu", "cuda"]
    memory_gib: float = Field(gt=0)
    memory_bandwidth_gbps: float = Field(gt=0)
    peak_tflops: _Peak
    bf16_native: bool
    power_watts: float = Field(gt=0)
    usd_per_hour_on_demand: float | None = Field(gt=0)
    usd_per_hour_spot: float | None = Field(gt=0)
    # a spot price comes with what a reclaim costs (pipeline/cost/reclaim.py): the share of
    # instances reclaimed in a month (AWS Spot Instance Advisor's unit) and a new VM's start-up
    spot_reclaims_per_month: float | None = Field(default=None, gt=0, lt=1)
    spot_restart_minutes: float | None = Field(default=None, ge=0)
    colab_units_per_hour: float | None = Field(gt=0)
    mfu_default: float = Field(gt=0, le=1)
    # where a precision reaches another share of its own peak (a CPU's AMX bf16 matmuls are ~6x its
    # fp32 ones, the rest of the step is not)
    mfu_by_precision: dict[Literal["fp32", "fp16", "bf16"], float] = {}
    runtime_overhead_gib: float = Field(ge=0)
    sources: dict[str, str]
    # a cuda entry: the names the driver reports for the GPU (torch.cuda.get_device_name(),
    # nvidia-smi --query-gpu=name), by which doctor and gpu-check know it
    gpu_names: list[str] = []
    # an offer: the device it rents (a new params entry may name one and give the offer's fields
    # alone), the cloud and the instance type its prices are for
    device: str | None = None
    cloud: str | None = None
    instance: str | None = None

    @field_validator("gpu_names")
    @classmethod
    def _only_gpus_have_gpu_names(cls, names: list[str], info: ValidationInfo) -> list[str]:
        kind = info.data.get("kind")
        if names and kind != "cuda":
            raise ValueError(f"a {kind} entry is no GPU: remove its gpu_names")
        return names

    @model_validator(mode="after")
    def _spot_price_has_its_reclaims(self) -> _Spec:
        if self.usd_per_hour_spot is None:
            return self
        missing = [k for k in SPOT_FIELDS if getattr(self, k) is None] + \
                  [f"sources.{k}" for k in SPOT_FIELDS if not self.sources.get(k)]
        if missing:
            raise ValueError(f"a spot price needs {', '.join(missing)} (what a reclaim costs, with its source)")
        return self


class _Colab(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    usd_per_compute_unit: float = Field(gt=0)
    source: str


class _Storage(BaseModel):
    """Where a checkpoint goes: the VM's disk and the bucket that outlives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    disk_write_mb_per_s: float = Field(gt=0)
    bucket_mb_per_s: float = Field(gt=0)
    sources: dict[Literal["disk_write_mb_per_s", "bucket_mb_per_s"], str]


@dataclass(frozen=True)
class Storage:
    disk_write_bytes_per_s: float
    bucket_bytes_per_s: float
    sources: dict[str, str]


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
    detected: dict[str, Any] | None = None  # pipeline.cost.cpuinfo.profile() where the entry was detected
    mfu_by_precision: dict[str, float] = field(default_factory=dict)
    gpu_names: tuple[str, ...] = ()   # what the driver calls it (cuda entries)
    spot_reclaims_per_month: float | None = None   # where it has a spot price
    spot_restart_minutes: float | None = None
    chip: str | None = None           # its entry under the catalog's devices: the hardware its offers share
    cloud: str | None = None          # an offer's: where its prices are for
    instance: str | None = None

    def mfu(self, precision: str) -> float:
        """The catalog's assumed MFU of a run in `precision` (model FLOPs over that precision's peak)."""
        return self.mfu_by_precision.get(precision, self.mfu_default)

    def priced(self, num_devices: int) -> int:
        """The devices cost.num_devices processes pay for and run at the speed of: on a CPU they
        share one machine's cores and its one matmul peak, so they are one CPU, not N."""
        return 1 if self.kind == "cpu" else num_devices

    def usd_per_hour(self, pricing: str) -> float | None:
        """The catalog price for on_demand / spot / colab; None where not rented that way."""
        return {"on_demand": self.usd_per_hour_on_demand, "spot": self.usd_per_hour_spot,
                "colab": self.usd_per_hour_colab}.get(pricing)


def catalog(extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Device]:
    """Every device: the packaged catalog, then params entries (a known name takes only the fields
    it changes; a new name needs every field)."""
    return _build(_entries(extra), extra)


def get_device(cost: Cost) -> Device:
    """The device named by cost.hardware. Only its entry is built: naming a GPU never measures this CPU."""
    entries = _entries(cost.extra_hardware)
    if cost.hardware not in entries:
        close = difflib.get_close_matches(cost.hardware, entries, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise PipelineError(f"cost.hardware: unknown device {cost.hardware!r}; {guess}known: {', '.join(entries)} "
                            "(or describe it under cost.extra_hardware)")
    return _build({cost.hardware: entries[cost.hardware]}, cost.extra_hardware)[cost.hardware]


def gpus(extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Device]:
    """The CUDA entries, without building the `cpu` entry (which measures this machine). A GPU
    name two devices list is refused: the driver's name must say which device a GPU is (the
    offers of one device share its names)."""
    devices = _build({name: e for name, e in _entries(extra).items() if e.get("kind") == "cuda"}, extra)
    listed: dict[str, set[str]] = {}
    for device in devices.values():
        for gpu_name in device.gpu_names:
            listed.setdefault(_normalized(gpu_name), set()).add(device.chip)
    shared = [f"{gpu_name!r} in {' and '.join(sorted(chips))}" for gpu_name, chips in listed.items() if len(chips) > 1]
    if shared:
        raise PipelineError(f"gpu_names: {'; '.join(shared)}: list each name the driver reports under one device")
    return devices


def gpu_offers(reported: str, extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Device]:
    """The entries cost.hardware may name for the GPU the driver calls `reported` (case and spacing
    aside), by name: every offer of its device, or the device where no offer rents it; {} when no
    device lists the name."""
    wanted = _normalized(reported)
    return {name: device for name, device in gpus(extra).items()
            if wanted in {_normalized(n) for n in device.gpu_names}}


def gpu_entry(reported: str, extra: dict[str, dict[str, Any]] | None = None, *,
              prefer: str | None = None) -> str | None:
    """The entry a GPU is known by: `prefer` (cost.hardware) where it is an offer of the GPU's device,
    else its first (the offers of one device share its specs); None for a GPU no device lists."""
    offers = gpu_offers(reported, extra)
    return prefer if prefer in offers else next(iter(offers), None)


def _normalized(gpu_name: str) -> str:
    return " ".join(gpu_name.split()).casefold()


def storage() -> Storage:
    """The catalog's disk and bucket bandwidths, with their sources."""
    spec = _packaged().storage
    return Storage(disk_write_bytes_per_s=spec.disk_write_mb_per_s * 1e6, bucket_bytes_per_s=spec.bucket_mb_per_s * 1e6,
                   sources=dict(spec.sources))


@dataclass(frozen=True)
class _Packaged:
    devices: dict[str, dict[str, Any]]   # as written (a source may be a key of the shared table)
    entries: dict[str, dict[str, Any]]   # what cost.hardware names: each offer over its device, the owned devices
    sources: dict[str, str]              # the shared table
    colab: _Colab
    storage: _Storage


@lru_cache(maxsize=1)
def _packaged() -> _Packaged:
    data = yaml.safe_load(CATALOG_FILE.read_text(encoding="utf-8"))
    shared, devices, offers = data["sources"], data["devices"], data["offers"]
    problems = _layout_problems(devices, offers, shared)
    if problems:
        raise PipelineError(f"{CATALOG_FILE}: " + "; ".join(problems))
    rented = {offer["device"] for offer in offers.values()}
    entries = {name: _offer_entry({}, spec) for name, spec in devices.items() if name not in rented}
    entries |= {name: _offer_entry(offer, devices[offer["device"]]) for name, offer in offers.items()}
    return _Packaged(devices=devices, entries=entries, sources=shared, colab=_Colab.model_validate(data["colab"]),
                     storage=_Storage.model_validate(data["storage"]))


def _offer_entry(offer: dict[str, Any], device: dict[str, Any]) -> dict[str, Any]:
    """An offer with its device's fields, one entry as cost.hardware names it; no offer: the device owned."""
    return {**NOT_RENTED, **device, **offer, "sources": {**device.get("sources", {}), **offer.get("sources", {})}}


def _layout_problems(devices: dict[str, Any], offers: dict[str, Any], shared: dict[str, str]) -> list[str]:
    """What breaks the split: an offer's field on a device or the reverse, an offer of no device, a
    name both a device and an offer, a source key the shared table lacks."""
    problems = [f"devices.{name}.{key} belongs to an offer" for name, spec in devices.items()
                for key in spec if key in OFFER_FIELDS or key == "device"]
    problems += [f"offers.{name}.{key} belongs to its device" for name, offer in offers.items()
                 for key in offer if key not in (*OFFER_FIELDS, "device", "sources")]
    problems += [f"offers.{name}.device {offer.get('device')!r} is no entry of devices"
                 for name, offer in offers.items() if offer.get("device") not in devices]
    problems += [f"{name} is both a device and an offer" for name in devices if name in offers]
    problems += [f"{part}.{name}.sources.{key}: no source {text!r} in the sources table" for part, table in
                 (("devices", devices), ("offers", offers)) for name, spec in table.items()
                 for key, text in spec.get("sources", {}).items() if len(text.split()) == 1 and text not in shared]
    return problems


def _entries(extra: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """The packaged entries with params' merged over them (a new name that names a `device` starts
    from that device), their cited sources written out; still unvalidated."""
    packaged = _packaged()
    entries = {name: dict(spec) for name, spec in packaged.entries.items()}
    for name, spec in (extra or {}).items():
        if not isinstance(spec, dict):
            raise PipelineError(f"cost.extra_hardware.{name} must be a mapping of fields "
                                f"(see pipeline/cost/hardware.yaml), not {type(spec).__name__}")
        device = spec.get("device")
        new_offer = name not in entries and device is not None
        if new_offer and not (isinstance(device, str) and device in packaged.devices):
            raise PipelineError(f"cost.extra_hardware.{name}.device: no device {device!r} in "
                                f"{CATALOG_FILE.name}; known: {', '.join(packaged.devices)}")
        entries[name] = _offer_entry(spec, packaged.devices[device]) if new_offer else {**entries.get(name, {}), **spec}
    return {name: _cited(entry, name, packaged.sources) for name, entry in entries.items()}


def _cited(entry: dict[str, Any], name: str, shared: dict[str, str]) -> dict[str, Any]:
    """The entry with each source that names a key of the shared table replaced by its text, written
    for this entry."""
    sources = entry.get("sources")
    if not isinstance(sources, dict):  # left for validation to name
        return entry
    own = {"{name}": name, "{instance}": str(entry.get("instance"))}
    return {**entry, "sources": {key: _filled(shared[text], own) if isinstance(text, str) and text in shared else text
                                 for key, text in sources.items()}}


def _filled(text: str, own: dict[str, str]) -> str:
    for placeholder, value in own.items():
        text = text.replace(placeholder, value)
    return text


def _build(entries: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]] | None) -> dict[str, Device]:
    """Devices from validated entries, or one error naming every bad field."""
    colab = _packaged().colab
    problems, devices = [], {}
    for name, entry in entries.items():
        where = f"cost.extra_hardware.{name}" if name in (extra or {}) else f"{CATALOG_FILE.name}: {name}"
        entry, detected = _with_detected(entry)
        try:
            devices[name] = _device(name, _Spec.model_validate(entry), colab, detected)
        except ValidationError as exc:
            problems += [f"{'.'.join([where, *(str(p) for p in e['loc'])])}: "
                         f"{'missing' if e['type'] == 'missing' else e['msg'].removeprefix('Value error, ')}"
                         for e in exc.errors()]
    if problems:
        raise PipelineError("invalid hardware entries:\n" + "\n".join(f"  - {p}" for p in problems)
                            + "\nFix them (every field of pipeline/cost/hardware.yaml, prices and MFU > 0).")
    return devices


def _with_detected(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A `detect: true` entry with the DETECTED fields it lacks (and their sources) taken from this
    machine, and the profile they came from; any other entry as it is, and None."""
    missing = [name for name in DETECTED if name not in entry]
    if entry.get("detect") is not True or not missing:
        return entry, None
    found = cpuinfo.profile()
    fields, sources = _detected_fields(found), _detected_sources(found)
    filled = {**{name: fields[name] for name in missing}, **entry}
    if isinstance(entry.get("sources", {}), dict):  # anything else is left for validation to name
        filled["sources"] = {**{name: sources[name] for name in missing}, **entry.get("sources", {})}
    return filled, found


def _detected_fields(found: dict[str, Any]) -> dict[str, Any]:
    bf16 = "native" if found["bf16_native"] else "no native"
    return {"description": f"this machine: {found['model']}, {found['cores']} cores usable, {bf16} bf16 "
                           f"(flags: {' '.join(found['flags']) or 'none of ' + ' '.join(cpuinfo.ISA_FLAGS)}), owned",
            "memory_gib": found["memory_bytes"] / GIB,
            "peak_tflops": {p: flops / 1e12 for p, flops in found["peak_flops"].items()},
            "bf16_native": found["bf16_native"]}


def _detected_sources(found: dict[str, Any]) -> dict[str, str]:
    sizes = ", ".join(f"{p} {run['size']}" for p, run in found["matmul"].items())
    cached = f"cached in {found['cache_file']}" if found["cache_file"] else "not cached"
    bf16_flags = sorted(cpuinfo.BF16_FLAGS & set(found["flags"]))
    return {"description": f"detected: {found['model_source']}; {found['cores_source']}",
            "memory_gib": f"detected: {found['memory_source']}",
            "peak_tflops": f"measured on this machine at {found['measured_at']}, load average "
                           f"{found['load_average']:g}: fastest square matmul on {found['cores']} threads, torch "
                           f"{found['torch_version']} (sizes {sizes}); {cached}; other processes on these cores "
                           "lower it: the highest measurement is kept, and a quieter machine measures again",
            "bf16_native": f"detected: {found['flags_source']} list "
                           f"{' and '.join(bf16_flags) or 'neither avx512_bf16 nor amx_bf16'}; "
                           f"torch.backends.cpu.get_cpu_capability() is {found['torch_cpu_capability']}"}


def _device(name: str, spec: _Spec, colab: _Colab, detected: dict[str, Any] | None) -> Device:
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
        mfu_by_precision=dict(spec.mfu_by_precision),
        runtime_overhead_bytes=int(spec.runtime_overhead_gib * GIB),
        sources=sources,
        detected=detected,
        gpu_names=tuple(spec.gpu_names),
        spot_reclaims_per_month=spec.spot_reclaims_per_month,
        spot_restart_minutes=spec.spot_restart_minutes,
        chip=spec.device or name,
        cloud=spec.cloud,
        instance=spec.instance,
    )
