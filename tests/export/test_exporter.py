"""`export_adapter` and `lorafleet export` end to end on a tiny model: every variant written, run in its
runtime and checked; a target keeps one; a failed check, a refusal or an interruption leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorafleet.errors import ExportError
from lorafleet.export import checks, exporter
from lorafleet.export.exporter import MANIFEST, export_adapter
from lorafleet.export.plan import ExportPlan
from tests.helpers import assert_friendly_error, invoke, save_random_adapter


def test_every_gguf_variant_is_written_checked_and_described(
    random_adapter: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = export_adapter(random_adapter, out, ExportPlan.parse("gguf", "f16,lora"), base=str(tiny_dir))
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "rand-f16.gguf", "rand-lora.gguf"]
    f16, lora = report.variants
    assert f16.max_abs_logit_diff is not None and f16.max_abs_logit_diff <= 1e-2 and f16.checked_tokens == 256
    assert lora.max_abs_logit_diff is not None and lora.max_abs_logit_diff <= 1e-2  # on the f16 base
    assert f16.tokens_per_s > 0 and f16.size_bytes == (out / "rand-f16.gguf").stat().st_size
    assert json.loads((out / MANIFEST).read_text())["variants"][1]["file"] == "rand-lora.gguf"


def test_q4_mix_stores_the_adapters_matrices_apart(
    random_adapter: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """The adapter (q_proj and v_proj) changed those matrices: Q5_0; the others the base's grid, Q4_1."""
    from gguf import GGMLQuantizationType, GGUFReader

    out = tmp_path / "out"
    export_adapter(
        random_adapter, out, ExportPlan.parse("gguf", "q4_mix", check_tokens=0), base=str(tiny_dir)
    )
    types = {t.name: t.tensor_type for t in GGUFReader(out / "rand-q4_mix.gguf").tensors}
    for layer in (0, 1):
        for name in ("attn_q", "attn_v"):
            assert types[f"blk.{layer}.{name}.weight"] == GGMLQuantizationType.Q5_0
        for name in ("attn_k", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            assert types[f"blk.{layer}.{name}.weight"] == GGMLQuantizationType.Q4_1


def test_q4_mix_fitted_to_a_target_gives_up_the_smallest_update_first(
    random_adapter: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """A budget 1 byte under the plain q4_mix: the matrix with the smallest ‖ΔW‖/‖W‖ goes onto the base's
    grid (Q4_1), the other adapted ones stay Q5_0, and the file fits."""
    from gguf import GGMLQuantizationType, GGUFReader

    from lorafleet.adapters import load_adapter
    from lorafleet.export.gguf_layout import gguf_tensor_name
    from lorafleet.models import load_base

    plain_plan = ExportPlan.parse("gguf", "q4_mix", check_tokens=0)
    plain = export_adapter(random_adapter, tmp_path / "plain", plain_plan, base=str(tiny_dir))
    budget = plain.variants[0].size_bytes - 1
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(f"tight: {{size_mb: {budget / 1e6}, ms_per_token: 100000}}\n")
    out = tmp_path / "out"
    plan = ExportPlan.parse("gguf", "q4_mix", "tight", profiles_file=profiles, check_tokens=0)
    report = export_adapter(random_adapter, out, plan, base=str(tiny_dir))
    assert report.chosen == "gguf-q4_mix" and report.variants[0].size_bytes <= budget

    base, _ = load_base(str(tiny_dir), device="cpu")
    merged = load_adapter(load_base(str(tiny_dir), device="cpu")[0], random_adapter).merge_and_unload()
    changes = exporter.relative_changes(merged, base)
    assert len(changes) == 4  # q_proj and v_proj of both layers
    smallest = min(changes, key=changes.__getitem__)
    types = {t.name: t.tensor_type for t in GGUFReader(out / "rand-q4_mix.gguf").tensors}
    for parameter in changes:
        expected = GGMLQuantizationType.Q4_1 if parameter == smallest else GGMLQuantizationType.Q5_0
        assert types[str(gguf_tensor_name(parameter))] == expected, parameter


def test_adapted_parameters_name_the_merged_models_changed_weights(tiny_dir: Path, tmp_path: Path) -> None:
    from lorafleet.adapters import load_adapter
    from lorafleet.models import load_base

    base, _ = load_base(str(tiny_dir), device="cpu")
    before = {name: weight.detach().clone() for name, weight in base.named_parameters()}
    adapter = save_random_adapter(base, tmp_path / "a", target_modules=["k_proj", "down_proj"])
    peft_model = load_adapter(base, adapter)
    adapted = exporter.adapted_parameters(peft_model)
    merged = peft_model.merge_and_unload()
    changed = {name for name, weight in merged.named_parameters() if not torch.equal(weight, before[name])}
    assert adapted == changed and len(changed) == 4  # k_proj and down_proj of both layers


def test_a_target_keeps_one_variant_and_judges_each_against_every_profile(
    random_adapter: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    plan = ExportPlan.parse("gguf", "f16,q8_0", "raspberry_pi", check_tokens=0)
    report = export_adapter(random_adapter, out, plan, base=str(tiny_dir))
    assert report.chosen == "gguf-f16" and [v.name for v in report.variants] == ["gguf-f16"]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "rand-f16.gguf"]
    assert len(report.verdicts) == 2 * 3 and all(v["fits"] for v in report.verdicts)  # a tiny model fits all


def test_a_variant_outside_its_bound_fails_the_export_and_writes_nothing(
    random_adapter: Path, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(checks.BOUNDS, "q8_0", checks.Bound(max_abs_logit_diff=1e-9))
    with pytest.raises(ExportError, match=r"q8_0: max \|Δlogit\| .* exceeds 1e-09"):
        export_adapter(
            random_adapter, tmp_path / "exports" / "out", ExportPlan.parse("gguf", "q8_0"), base=str(tiny_dir)
        )
    assert list((tmp_path / "exports").iterdir()) == []


def test_an_export_interrupted_midway_leaves_nothing_behind(
    random_adapter: Path, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = exporter._write
    calls: list[str] = []

    def interrupted(format: str, variant: str, *args: object) -> None:
        calls.append(variant)
        if len(calls) == 2:
            raise KeyboardInterrupt
        write(format, variant, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(exporter, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_adapter(
            random_adapter,
            tmp_path / "exports" / "out",
            ExportPlan.parse("gguf", "f16,q8_0"),
            base=str(tiny_dir),
        )
    assert calls == ["f16", "q8_0"] and list((tmp_path / "exports").iterdir()) == []


def test_a_dora_adapter_is_refused_as_a_lora_file_before_any_work(tiny_dir: Path, tmp_path: Path) -> None:
    from lorafleet.models import load_base

    base, _ = load_base(str(tiny_dir), device="cpu")
    dora = save_random_adapter(base, tmp_path / "dora", use_dora=True)
    with pytest.raises(ExportError, match=r"DoRA.*--format gguf"):
        export_adapter(dora, tmp_path / "out", ExportPlan.parse("gguf", "lora"), base=str(tiny_dir))
    assert not (tmp_path / "out").exists()


def test_the_cli_exports_onnx_and_prints_the_figures(
    random_adapter: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "onnx"
    result = invoke(
        "export", "rand", "--format", "onnx", "--quant", "fp32", "--model", str(tiny_dir), "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    assert "onnx-fp32" in result.output and (out / "rand-fp32.onnx").is_file()
    again = invoke("export", "rand", "--format", "onnx", "--model", str(tiny_dir), "-o", str(out))
    assert_friendly_error(again, "already exists")
    bad = invoke("export", "rand", "--format", "gguf", "--target", "toaster", "--model", str(tiny_dir))
    assert_friendly_error(bad, "no device profile 'toaster'")


def test_the_cli_exports_a_registry_version_by_number_and_by_alias(
    random_adapter: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    from lorafleet.registry import Registry

    registry = Registry()
    tenant = registry.tenants.create("acme").id
    registry.adapters.register(tenant, "tickets", random_adapter, base_model=str(tiny_dir))
    registry.adapters.promote(tenant, "tickets", "production", 1, actor="test")
    registry.close()
    for spec in ("tickets@1", "tickets:production"):
        out = tmp_path / spec.replace(":", "-")
        result = invoke(
            "export", spec, "--tenant", "acme", "--format", "gguf", "--quant", "f16", "-o", str(out)
        )
        assert result.exit_code == 0, (result.output, result.exception)
        assert json.loads((out / MANIFEST).read_text())["variants"][0]["max_abs_logit_diff"] <= 1e-2
    unknown = invoke("export", "tickets:staging", "--tenant", "acme", "--format", "gguf")
    assert_friendly_error(unknown, "no alias 'staging'", "production")
