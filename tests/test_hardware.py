"""Hardware datasheet catalog: loads, resolves aliases, agrees with real system files."""

from __future__ import annotations

import json

import pytest
import yaml

from mist.profiles.hardware import DEFAULT_CATALOG, get_hardware, load_catalog
from mist.traces.errors import TraceError

REQUIRED = ("RTXPRO6000", "RTX4090", "H100_SXM", "H200", "A100_SXM_80GB", "L40S", "MI300X")
#: devices every figure of which (link, price) is public; the others may lack a link
#: bandwidth (SambaNova, Intel Xe Link) or an hourly price, and say so in their source.
PRICED = (*REQUIRED, "A100_SXM_40GB", "GH200", "B200_SXM")
#: every accelerator the shared benchmark and system files name.
BENCH_NAMES = {
    "Nvidia H100 GPU": "H100_SXM", "Nvidia A100 GPU": "A100_SXM_40GB", "Nvidia GH200 GPU": "GH200",
    "AMD MI250 GPU": "MI250", "AMD MI300X GPU": "MI300X", "Habana Gaudi2": "GAUDI2",
    "Intel Max 1550": "MAX1550", "Intel PVC GPU": "MAX1550", "SambaNova SN40L": "SN40L",
    "h100_sxm": "H100_SXM", "b200_sxm": "B200_SXM", "b300_sxm": "B300_SXM", "gb200": "GB200",
    "gb300": "GB300", "a100_sxm": "A100_SXM_80GB", "l40s": "L40S", "h200_sxm": "H200",
}


def test_catalog_has_every_device_with_core_figures():
    catalog = load_catalog()
    assert set(REQUIRED) <= set(catalog) and set(BENCH_NAMES.values()) <= set(catalog)
    for hw in catalog.values():
        assert hw.peak("bf16") > 1e13, hw.name
        assert hw.memory_bytes > 1e9 and hw.memory_bw_bytes_s > 1e11, hw.name
        assert len(hw.sources["datasheet"]) > 20, hw.name
        if hw.interconnect_bw_bytes_s is None:
            assert "not given" in hw.sources["datasheet"], hw.name
        else:
            assert hw.interconnect_bw_bytes_s > 0 and hw.interconnect, hw.name
        if hw.price_per_hour_usd is None:
            assert "price" in hw.sources["datasheet"], hw.name  # says none was found
        else:
            assert len(hw.sources["price"]) > 20, hw.name
    for name in PRICED:
        assert catalog[name].price_per_hour_usd > 0, name
        # dense figures: fp8 about 2x bf16 (a sparse fp8 figure would be 4x); L40S's
        # datasheet really says 733 vs 362.05
        if "fp8" in hw.peak_flops:
            assert hw.peak_flops["fp8"] <= 2.05 * hw.peak_flops["bf16"], hw.name


@pytest.mark.parametrize(
    ("alias", "key"),
    [
        ("h100_sxm", "H100_SXM"),
        ("RTXPRO6000", "RTXPRO6000"),
        ("rtxpro6000", "RTXPRO6000"),
        ("H100 SXM", "H100_SXM"),
        ("a100_sxm", "A100_SXM_80GB"),
        ("l40s", "L40S"),
        ("mi300x", "MI300X"),
    ],
)
def test_aliases_resolve(alias, key):
    assert get_hardware(alias).name == key


@pytest.mark.parametrize(("name", "key"), sorted(BENCH_NAMES.items()))
def test_benchmark_and_system_names_resolve(name, key):
    assert get_hardware(name).name == key


def test_every_accelerator_in_shared_tables_resolves(shared):
    import csv

    names = set()
    for path in sorted(shared.llm_bench_csv.parent.glob("*.csv")):
        with path.open() as f:
            names |= {row["Hardware"] for row in csv.DictReader(f) if row.get("Hardware")}
    with shared.silicon_csv.open() as f:
        names |= {row["system"] for row in csv.DictReader(f)}
    names |= {p.stem for p in shared.aiconfigurator.glob("*.yaml")}
    assert len(names) >= 15
    catalog = load_catalog()
    for name in names:
        assert get_hardware(name, catalog).name in set(BENCH_NAMES.values()), name


def test_full_name_from_profile_meta_resolves(shared):
    meta = shared.llama_bundle / "meta.yaml"
    gpu = yaml.safe_load(meta.read_text())["gpu"]
    assert gpu == "NVIDIA RTX PRO 6000 Blackwell Server Edition"
    assert get_hardware(gpu).name == "RTXPRO6000"


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="RTXPRO6000"):
        get_hardware("TPU v9")


def test_benchmark_style_names_resolve_without_vendor_words(tmp_path):
    # LLM-Inference-Bench writes "<Vendor> <part> GPU"; an accelerator it has not shared
    # yet still finds its datasheet when exactly one device answers to the part's name
    assert get_hardware("Nvidia H200 GPU").name == "H200"
    assert get_hardware("Nvidia L40S GPU").name == "L40S"
    assert get_hardware("AMD Instinct MI300X").name == "MI300X"
    for name in ("NVIDIA GPU", "AMD MI999X GPU"):
        with pytest.raises(KeyError):
            get_hardware(name)
    # two devices answering to the same part name: no guess
    path = _write_catalog(tmp_path, lambda d: d["L40S"].update(aliases=["l40s", "AMD H200"]))
    with pytest.raises(KeyError):
        get_hardware("Nvidia H200 GPU", load_catalog(path))


def test_rtxpro6000_matches_cluster_json(shared):
    hw = get_hardware("RTXPRO6000")
    clusters = sorted(shared.runs.glob("*/cluster.json"))
    assert clusters
    for path in clusters:
        for node in json.loads(path.read_text())["nodes"]:
            for inst in node["instances"]:
                assert inst["hardware"] == "RTXPRO6000"
                # LLMServingSim npu_mem: mem_size in GB (1e9 B), mem_bw in GB/s (1e9 B/s)
                assert hw.memory_bytes == pytest.approx(inst["npu_mem"]["mem_size"] * 1e9)
                assert hw.memory_bw_bytes_s == pytest.approx(inst["npu_mem"]["mem_bw"] * 1e9)


# aiconfigurator rounds (989 vs 989.4 TFLOPS) and reports L40S memory with ECC on
# (46068 MiB vs 48 GB): 1 % on rates and links, 1 % on capacity.
AIC_TOLERANCE = 0.01


@pytest.mark.parametrize(
    ("system", "key"), [("h100_sxm", "H100_SXM"), ("a100_sxm", "A100_SXM_80GB"), ("l40s", "L40S")]
)
def test_agrees_with_aiconfigurator_system(shared, system, key):
    sys_yaml = yaml.safe_load((shared.aiconfigurator / f"{system}.yaml").read_text())
    gpu, node = sys_yaml["gpu"], sys_yaml["node"]
    hw = get_hardware(key)
    tol = AIC_TOLERANCE
    assert hw.peak_flops["bf16"] == pytest.approx(gpu["bfloat16_tc_flops"], rel=tol)
    assert hw.peak_flops["int8"] == pytest.approx(gpu["int8_tc_flops"], rel=tol)
    if "fp8_tc_flops" in gpu:
        assert hw.peak_flops["fp8"] == pytest.approx(gpu["fp8_tc_flops"], rel=tol)
    assert hw.memory_bw_bytes_s == pytest.approx(gpu["mem_bw"], rel=tol)
    assert hw.memory_bytes == pytest.approx(gpu["mem_capacity"], rel=tol)
    assert hw.tdp_w == pytest.approx(gpu["power"])
    assert hw.interconnect_bw_bytes_s == pytest.approx(node["intra_node_bw"], rel=tol)


def test_peak_accepts_torch_dtype_names():
    hw = get_hardware("H100_SXM")
    assert hw.peak("bfloat16") == hw.peak("bf16") == hw.peak("auto") == pytest.approx(989.4e12)
    with pytest.raises(KeyError, match="fp4"):
        hw.peak("fp4")


def _write_catalog(tmp_path, mutate):
    doc = yaml.safe_load(DEFAULT_CATALOG.read_text())
    mutate(doc["devices"])
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["L40S"].pop("memory_bw_gbps"), "memory_bw_gbps"),
        (lambda d: d["L40S"].update(memory_bw_gbps="fast"), "memory_bw_gbps"),
        (lambda d: d["L40S"]["peak_tflops"].update(bf16=-1), "bf16"),
        (lambda d: d["L40S"]["peak_tflops"].update(bf17=1), "peak_tflops"),
        (lambda d: d["L40S"].pop("price_source"), "price_source"),
        (lambda d: d["L40S"].update(kind="gpgpu"), "kind"),
        (lambda d: d["L40S"].update(memory_gib=48), "memory_gib"),
        (lambda d: d["L40S"]["interconnect"].pop("bw_gbps_per_direction"), "bw_gbps_per_direction"),
        (lambda d: d["L40S"].update(aliases=["h100_sxm"]), "h100_sxm"),
    ],
)
def test_malformed_catalog_names_device_and_field(tmp_path, mutate, field):
    path = _write_catalog(tmp_path, mutate)
    with pytest.raises(TraceError, match=field) as info:
        load_catalog(path)
    assert "L40S" in str(info.value) and info.value.path == str(path)


def test_bad_yaml_and_missing_devices(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices:\n  X: [1, 2\n")
    with pytest.raises(TraceError, match="YAML"):
        load_catalog(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("gpus: {}\n")
    with pytest.raises(TraceError, match="devices"):
        load_catalog(empty)


def test_compute_capability_from_the_architecture():
    # what decides which kernels vLLM runs (an H200 runs the H100's)
    assert get_hardware("h200_sxm").sm_version == get_hardware("h100_sxm").sm_version == 90
    assert get_hardware("b200_sxm").sm_version == 100
    assert get_hardware("mi300x").sm_version is None  # no CUDA compute capability


def test_a_users_catalog_adds_devices_and_replaces_known_ones(tmp_path):
    base = yaml.safe_load(DEFAULT_CATALOG.read_text())["devices"]
    h100 = dict(base["H100_SXM"], memory_bw_gbps=3000, source="a user's own measurement")
    new = {"kind": "asic", "vendor": "Example", "peak_tflops": {"bf16": 100}, "memory_gb": 32,
           "memory_bw_gbps": 1000, "source": "made up for this test", "aliases": ["X1 accelerator"]}
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"devices": {"H100_SXM": h100, "X1": new}}))
    catalog = load_catalog(extra=[user])
    assert list(catalog)[: len(base)] == list(base) and list(catalog)[-1] == "X1"
    assert get_hardware("Nvidia H100 GPU", catalog).memory_bw_bytes_s == 3000e9
    assert get_hardware("x1 accelerator", catalog).memory_bytes == 32e9
    assert load_catalog()["H100_SXM"].memory_bw_bytes_s == 3350e9  # the packaged file is untouched
    clash = tmp_path / "clash.yaml"
    clash.write_text(yaml.safe_dump({"devices": {"X2": dict(new, aliases=["H100 SXM"])}}))
    with pytest.raises(TraceError, match="clash.yaml.*already belongs to 'H100_SXM'"):
        load_catalog(extra=[clash])
