"""Device profiles: the shipped table, users' own, the verdicts, and a target nothing fits failing loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafleet.errors import ConfigError, ExportError
from lorafleet.export.plan import ExportPlan
from lorafleet.export.profiles import DeviceProfile, Measured, choose, load_profiles, profile, verdict

Q4 = Measured("gguf-q4_0", size_mb=80.0, ms_per_token=20.0)
Q8 = Measured("gguf-q8_0", size_mb=145.0, ms_per_token=25.0)
F16 = Measured("gguf-f16", size_mb=271.0, ms_per_token=40.0)


def test_the_shipped_profiles_hold_the_issue_budgets() -> None:
    profiles = load_profiles()
    budgets = {name: (p.size_mb, p.ms_per_token) for name, p in profiles.items()}
    assert budgets == {"mobile_cpu": (100, 100), "embedded_npu": (200, 50), "raspberry_pi": (500, 500)}


def test_users_add_and_replace_profiles_in_their_home(lorafleet_home: Path, tmp_path: Path) -> None:
    lorafleet_home.mkdir(parents=True, exist_ok=True)
    (lorafleet_home / "profiles.yaml").write_text("raspberry_pi: {size_mb: 300, ms_per_token: 400}\n")
    extra = tmp_path / "mine.yaml"
    extra.write_text("kiosk:\n  size_mb: 50\n  ms_per_token: 10\n  description: our kiosk\n")
    profiles = load_profiles(extra)
    assert profiles["raspberry_pi"].size_mb == 300 and profiles["mobile_cpu"].size_mb == 100
    assert profiles["kiosk"] == DeviceProfile(size_mb=50, ms_per_token=10, description="our kiosk")


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("kiosk: {size_mb: -1, ms_per_token: 10}\n", ["mine.yaml", "kiosk.size_mb"]),
        ("kiosk: {size_mb: 10, ms_per_token: 10, colour: red}\n", ["mine.yaml", "kiosk.colour"]),
        ("kiosk: 12\n", ["mine.yaml", "kiosk"]),
        ("- a list\n", ["mine.yaml", "mapping"]),
        ("kiosk: {size_mb: [\n", ["mine.yaml", "YAML"]),
    ],
)
def test_a_bad_profiles_file_is_refused_naming_the_file_and_field(
    tmp_path: Path, text: str, names: list[str]
) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_profiles(path)
    assert all(name in str(err.value) for name in names), str(err.value)


def test_an_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="mobile_cpu") as err:
        profile("toaster")
    assert "toaster" in str(err.value)


def test_the_target_keeps_the_most_faithful_export_that_fits() -> None:
    profiles = load_profiles()
    assert choose("mobile_cpu", profiles["mobile_cpu"], [F16, Q8, Q4]) == Q4
    assert choose("embedded_npu", profiles["embedded_npu"], [F16, Q8, Q4]) == Q8
    assert choose("raspberry_pi", profiles["raspberry_pi"], [F16, Q8, Q4]) == F16
    slow = Measured("gguf-q8_0", size_mb=145.0, ms_per_token=60.0)  # too slow for the NPU's 50 ms
    assert choose("embedded_npu", profiles["embedded_npu"], [F16, slow, Q4]) == Q4
    faithful_q4 = Measured("gguf-q4_0", size_mb=80.0, ms_per_token=20.0, top1_agreement=0.98, mean_kl=0.01)
    lossy_q8 = Measured("gguf-q8_0", size_mb=145.0, ms_per_token=25.0, top1_agreement=0.99, mean_kl=0.05)
    assert choose("embedded_npu", profiles["embedded_npu"], [lossy_q8, faithful_q4]) == faithful_q4
    unchecked = Measured("gguf-f16", size_mb=150.0, ms_per_token=25.0)  # no KL: after the checked ones
    assert choose("embedded_npu", profiles["embedded_npu"], [unchecked, lossy_q8]) == lossy_q8
    check = verdict("embedded_npu", profiles["embedded_npu"], slow)
    assert (check.fits_size, check.fits_speed, check.fits) == (True, False, False)


def test_a_target_nothing_fits_fails_naming_what_it_would_take() -> None:
    tiny = DeviceProfile(size_mb=10, ms_per_token=100)
    with pytest.raises(ExportError) as err:
        choose("watch", tiny, [F16, Q8, Q4])
    assert "gguf-q4_0" in str(err.value) and "80" in str(err.value) and "8.0× smaller" in str(err.value)
    quick = DeviceProfile(size_mb=1000, ms_per_token=5)
    with pytest.raises(ExportError, match=r"gguf-q4_0, takes 20.0 ms.*4.0× faster"):
        choose("fast", quick, [F16, Q8, Q4])


@pytest.mark.parametrize(
    ("words", "variants"),
    [
        (("gguf", None, None), ("q8_0",)),
        (("onnx", None, None), ("int8",)),
        (("gguf", None, "mobile_cpu"), ("f16", "q8_0", "q4_0", "q4_mix")),
        (("gguf", "all", None), ("f16", "q8_0", "q4_0", "q4_mix", "lora")),
        (("gguf", "Q4_0, f16,q4_0", None), ("q4_0", "f16")),
        (("onnx", "fp32", "raspberry_pi"), ("fp32",)),
    ],
)
def test_a_plan_reads_the_variants_asked_for(
    words: tuple[str, str | None, str | None], variants: tuple[str, ...]
) -> None:
    assert ExportPlan.parse(*words).variants == variants


@pytest.mark.parametrize(
    ("words", "field", "message"),
    [
        (("tflite", None, None), "format", "gguf, onnx"),
        (("gguf", "int8", None), "quant", "f16, q8_0, q4_0, q4_mix, lora"),
        (("onnx", ",", None), "quant", "fp32, int8"),
        (("gguf", "lora", "mobile_cpu"), None, "merged variant"),
        (("gguf", None, "toaster"), None, "no device profile 'toaster'"),
    ],
)
def test_a_bad_plan_fails_before_any_work_naming_the_field(
    words: tuple[str, str | None, str | None], field: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        ExportPlan.parse(*words)
    assert err.value.field == field
