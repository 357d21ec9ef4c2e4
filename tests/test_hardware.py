"""The device catalog: every shipped entry loads and is sourced; params can extend it; bad entries
and unknown names fail with messages that say what to fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cost import cpuinfo, hardware
from pipeline.core import params as params_module
from pipeline.core.errors import PipelineError

ROOT = Path(__file__).resolve().parent.parent
# every name cost.hardware took before the catalog kept devices apart from their offers, and the L4 on Google Cloud
REQUIRED = ["cpu", "rtx2050-laptop-4gb", "t4-16gb", "l4-24gb", "a10g-24gb", "a100-40gb", "a100-80gb", "h100-80gb",
            "l4-24gb-gcp"]
SOURCED = ["memory_gib", "memory_bandwidth_gbps", "peak_tflops", "bf16_native", "power_watts", "mfu_default"]


@pytest.fixture(autouse=True)
def cpu_cache(tmp_path_factory, monkeypatch):
    """One real measurement of this machine per test session, kept out of the user's cache."""
    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cpu-cache"))


def machine_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                set())


def cost(**changes):
    base = params_module.load([ROOT / "params.yaml"]).cost
    return base.model_copy(update=changes)


def test_catalog_holds_every_required_device_with_sources():
    devices = hardware.catalog()
    assert set(REQUIRED) <= set(devices)
    for name, device in devices.items():
        assert device.memory_bytes > 0 and device.power_watts > 0 and 0 < device.mfu_default <= 1, name
        assert set(device.peak_flops) == {"fp32", "fp16", "bf16"}, name
        missing = [k for k in SOURCED if not device.sources.get(k)]
        assert not missing, f"{name} lacks sources for {missing}"
        for pricing in ("on_demand", "spot"):
            if device.usd_per_hour(pricing) is not None:
                assert device.sources.get(f"usd_per_hour_{pricing}"), f"{name}: {pricing} price without source"


def test_catalog_figures_that_plans_depend_on():
    devices = hardware.catalog()
    t4 = devices["t4-16gb"]
    # torch.cuda.is_bf16_supported() says True on a T4 through emulation: the catalog must not
    assert not t4.bf16_native and t4.peak_flops["fp16"] == 65e12 and t4.peak_flops["fp32"] == 8.1e12
    assert t4.usd_per_hour("on_demand") == 0.526
    assert t4.usd_per_hour("spot") < t4.usd_per_hour("on_demand")
    assert t4.usd_per_hour("colab") == pytest.approx(1.84 * 0.0999)
    assert devices["rtx2050-laptop-4gb"].bf16_native and devices["rtx2050-laptop-4gb"].memory_bytes < 4 * 2**30
    assert devices["rtx2050-laptop-4gb"].usd_per_hour("on_demand") is None  # owned
    cpu = devices["cpu"]
    assert cpu.kind == "cpu" and cpu.usd_per_hour("on_demand") is None
    assert cpu.bf16_native == bool(cpuinfo.BF16_FLAGS & machine_flags())  # this machine's, detected
    assert "measured on this machine" in cpu.sources["peak_tflops"]
    assert devices["h100-80gb"].peak_flops["bf16"] > devices["a100-80gb"].peak_flops["bf16"]


def test_get_device_follows_cost_hardware():
    assert hardware.get_device(cost(hardware="l4-24gb")).name == "l4-24gb"


def test_unknown_hardware_lists_the_known_ones():
    with pytest.raises(PipelineError, match="cost.hardware: unknown device 'v100'") as err:
        hardware.get_device(cost(hardware="v100"))
    assert all(name in str(err.value) for name in REQUIRED)
    assert "did you mean" not in str(err.value)


def test_unknown_hardware_suggests_the_closest_name():
    expected = "cost.hardware: unknown device 't4-16g'; did you mean 't4-16gb'\\? known: cpu, "
    with pytest.raises(PipelineError, match=expected):
        hardware.get_device(cost(hardware="t4-16g"))


def test_sources_cite_documents_or_a_command():
    text = hardware.CATALOG_FILE.read_text()
    for internal in ("FIELD-NOTES", "build machine", "this kind of machine"):
        assert internal not in text


def test_extra_hardware_adds_a_device_and_adjusts_a_known_one():
    spec = {"description": "my workstation GPU", "kind": "cuda", "memory_gib": 11, "memory_bandwidth_gbps": 616,
            "peak_tflops": {"fp32": 13.4, "fp16": 53.8, "bf16": 13.4}, "bf16_native": False, "power_watts": 250,
            "usd_per_hour_on_demand": None, "usd_per_hour_spot": None, "colab_units_per_hour": None,
            "mfu_default": 0.2, "runtime_overhead_gib": 0.4, "sources": {"peak_tflops": "datasheet"}}
    devices = hardware.catalog({"rtx2080ti": spec, "t4-16gb": {"usd_per_hour_on_demand": 0.35}})
    assert devices["rtx2080ti"].memory_bytes == 11 * 2**30 and devices["rtx2080ti"].peak_flops["fp16"] == 53.8e12
    assert devices["t4-16gb"].usd_per_hour("on_demand") == 0.35
    assert devices["t4-16gb"].peak_flops["fp16"] == 65e12  # the rest of the entry is kept
    assert hardware.get_device(cost(hardware="rtx2080ti", extra_hardware={"rtx2080ti": spec})).kind == "cuda"


def test_bad_extra_hardware_names_each_field():
    with pytest.raises(PipelineError) as err:
        hardware.catalog({"mygpu": {"kind": "cuda", "memory_gib": 8},
                          "t4-16gb": {"usd_per_hour_spot": 0, "mfu_default": 1.5}})
    message = str(err.value)
    assert "cost.extra_hardware.mygpu.peak_tflops: missing" in message
    assert "cost.extra_hardware.mygpu.power_watts: missing" in message
    assert "cost.extra_hardware.t4-16gb.usd_per_hour_spot" in message and "greater than 0" in message
    assert "cost.extra_hardware.t4-16gb.mfu_default" in message


def test_gpu_names_belong_to_gpus_one_device_each():
    with pytest.raises(PipelineError, match=r"cost.extra_hardware.cpu.gpu_names: a cpu entry is no GPU: remove"):
        hardware.catalog({"cpu": {"gpu_names": ["Tesla T4"]}})
    with pytest.raises(PipelineError, match=r"gpu_names: 'tesla t4' in nvidia-l4 and nvidia-t4: list each name"):
        hardware.gpus({"l4-24gb": {"gpu_names": ["NVIDIA L4", "TESLA  T4"]}})
    renamed = {name: {"gpu_names": ["NVIDIA L4 (our name)"]} for name in ("l4-24gb", "l4-24gb-gcp")}
    assert hardware.gpu_offers("NVIDIA L4", renamed) == {}


def test_a_gpu_is_known_by_the_offer_cost_hardware_names():
    assert hardware.gpu_entry("NVIDIA L4", prefer="l4-24gb-gcp") == "l4-24gb-gcp"
    assert hardware.gpu_entry("NVIDIA L4", prefer="t4-16gb") == "l4-24gb"   # not this GPU's: its first offer
    assert hardware.gpu_entry("NVIDIA L40S", prefer="t4-16gb") is None


def test_two_offers_of_one_device_share_its_specs_and_keep_their_own_prices():
    devices = hardware.catalog()
    aws, gcp = devices["l4-24gb"], devices["l4-24gb-gcp"]
    assert aws.chip == gcp.chip == "nvidia-l4" and (aws.cloud, gcp.cloud) == ("AWS", "Google Cloud")
    for spec in ("description", "memory_bytes", "peak_flops", "bf16_native", "mfu_default", "gpu_names",
                 "usd_per_hour_colab"):
        assert getattr(aws, spec) == getattr(gcp, spec), spec
    assert (aws.usd_per_hour("on_demand"), gcp.usd_per_hour("on_demand")) == (0.8048, 0.7068)
    assert aws.usd_per_hour("spot") == 0.32 and gcp.usd_per_hour("spot") is None
    assert "g2-standard-4" in gcp.sources["usd_per_hour_on_demand"] and "g6.xlarge" in aws.sources["usd_per_hour_on_demand"]
    assert gcp.sources["peak_tflops"] == aws.sources["peak_tflops"]


def test_a_source_is_written_once_and_cited_by_key():
    text = hardware.CATALOG_FILE.read_text()
    cited = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("      ") and ": " in line]
    prose = [c for c in cited if c.startswith('"')]
    assert len(prose) == len(set(prose)), sorted(c for c in prose if prose.count(c) > 1)
    devices = hardware.catalog()
    # a shared text names the entry that cites it where it tells the user what to set
    reclaims = devices["a10g-24gb"].sources["spot_reclaims_per_month"]
    assert "for g5.xlarge:" in reclaims and "cost.extra_hardware.a10g-24gb.spot_reclaims_per_month" in reclaims
    assert devices["t4-16gb"].sources["runtime_overhead_gib"] == devices["h100-80gb"].sources["runtime_overhead_gib"]


@pytest.mark.parametrize("devices,offers,problem", [
    ({"gpu": {"usd_per_hour_spot": 1.0}}, {}, "devices.gpu.usd_per_hour_spot belongs to an offer"),
    ({"gpu": {}}, {"rent": {"device": "gpu", "memory_gib": 8}}, "offers.rent.memory_gib belongs to its device"),
    ({"gpu": {}}, {"rent": {"device": "gpv"}}, "offers.rent.device 'gpv' is no entry of devices"),
    ({"gpu": {}}, {"gpu": {"device": "gpu"}}, "gpu is both a device and an offer"),
    ({"gpu": {"sources": {"power_watts": "datasheet-x"}}}, {}, "devices.gpu.sources.power_watts: no source 'datasheet-x'"),
])
def test_the_catalog_layout_is_checked(devices, offers, problem):
    assert any(problem in p for p in hardware._layout_problems(devices, offers, {"cuda-overhead": "text"}))


def test_an_offer_from_params_rents_a_catalog_device():
    offer = {"device": "nvidia-t4", "cloud": "Azure", "instance": "NC4as_T4_v3", "usd_per_hour_on_demand": 0.53,
             "sources": {"usd_per_hour_on_demand": "my invoice"}}
    azure = hardware.catalog({"t4-azure": offer})["t4-azure"]
    assert azure.chip == "nvidia-t4" and azure.peak_flops["fp16"] == 65e12 and azure.usd_per_hour("on_demand") == 0.53
    assert azure.usd_per_hour("spot") is None and azure.sources["usd_per_hour_on_demand"] == "my invoice"
    assert azure.sources["peak_tflops"].startswith("NVIDIA T4 Tensor Core GPU datasheet")
    assert list(hardware.gpu_offers("Tesla T4", {"t4-azure": offer})) == ["t4-16gb", "t4-azure"]
    with pytest.raises(PipelineError, match=r"cost.extra_hardware.t4-azure.device: no device 'nvidia-t5'"):
        hardware.catalog({"t4-azure": {**offer, "device": "nvidia-t5"}})


def test_extra_hardware_entry_must_be_a_mapping():
    with pytest.raises(PipelineError, match="cost.extra_hardware.gpu must be a mapping"):
        hardware.catalog({"gpu": 42})
