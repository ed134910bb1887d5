"""One export, start to end, written into its folder at once.

read      the adapter and its card (the training rows the checks are drawn from) → base + adapter
write     each asked variant into a staging folder: GGUF f16, q8_0, q4_0, q4_mix of the merged model, or lora
          (the adapter alone, for llama.cpp's --lora); ONNX fp32 or int8
check     each variant in its real runtime against the merged PyTorch model (`checks`): one outside
          its bound fails the export, naming the figure; its speed on this machine
target    with a device profile: every variant's verdict; the most faithful one that fits is kept and
          the others are dropped; none fitting fails, naming what it would take
manifest  `export.json` (figures, verdicts, each file's size and SHA-256), then the staging folder is
          renamed into place, so an export that fails or is interrupted leaves nothing behind
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorafleet.export.checks import Reference, agreement, check_prompts, enforce, reference_answers
from lorafleet.export.plan import ExportPlan
from lorafleet.export.profiles import Measured, choose, load_profiles, profile, verdict
from lorafleet.export.runtime import EdgeRuntime, tokens_per_second, torch_logits
from lorafleet.files import atomic_directory

MANIFEST = "export.json"
SUFFIX = {"gguf": ".gguf", "onnx": ".onnx"}
SPEED_TOKENS = 32  # decoded to time each variant (prompt processing included)
M = TypeVar("M", bound=nn.Module)


@dataclass
class VariantReport:
    """One written variant and its figures."""

    name: str  # gguf-q8_0
    file: str
    size_bytes: int
    sha256: str
    max_abs_logit_diff: float | None = None
    top1_agreement: float | None = None
    mean_kl: float | None = None  # nats (`checks`)
    checked_tokens: int = 0
    tokens_per_s: float = 0.0

    def measured(self) -> Measured:
        return Measured(
            self.name, self.size_bytes / 1e6, 1000 / self.tokens_per_s, self.top1_agreement, self.mean_kl
        )


@dataclass
class ExportReport:
    """What `export_adapter` wrote: the contents of `export.json`."""

    adapter: str
    base_model: str
    format: str
    created_at: str
    variants: list[VariantReport]
    target: str | None = None
    chosen: str | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # every variant against every profile

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def export_adapter(
    adapter: Path,
    output: Path,
    plan: ExportPlan,
    *,
    base: str = "default",
    overwrite: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> ExportReport:
    """Export the adapter directory `adapter` (trained on `base`) into the folder `output` (the module says
    how); the report is also written there as `export.json`."""
    from lorafleet.adapters import load_adapter
    from lorafleet.adapters.storage import read_adapter
    from lorafleet.models import load_base
    from lorafleet.models.loading import source_gguf

    config, _, card = read_adapter(adapter)
    if "lora" in plan.variants:
        from lorafleet.export.gguf_lora import check_exportable

        check_exportable(config, adapter)  # DoRA, modules_to_save, biases: refused before any work
    with atomic_directory(output, overwrite=overwrite) as staging, tempfile.TemporaryDirectory() as scratch:
        say(f"loading {base} and the adapter {adapter}")
        model, tokenizer = load_base(base, device="cpu", dtype="float32")
        written = Written(adapter, tokenizer, source_gguf(base), Path(scratch), say)
        lora_reference = None
        if "lora" in plan.variants:  # llama.cpp applies the lora file to the f16 base: the same in PyTorch
            written.base_f16 = written.gguf(model, Path(scratch) / "base-f16.gguf", "f16")
            lora_reference = f16_weights(load_adapter(deepcopy(model), adapter)).merge_and_unload()
        adapted = load_adapter(model, adapter)
        written.adapted = adapted_parameters(adapted)
        merged = adapted.merge_and_unload()
        assert isinstance(merged, PreTrainedModel)
        if plan.target and "q4_mix" in plan.variants:  # q4_mix is fitted to the target's size budget
            written.size_budget = int(profile(plan.target, plan.profiles_file).size_mb * 1e6)
            written.changes = relative_changes(merged, load_base(base, device="cpu", dtype="float32")[0])
        prompts = check_prompts(card.training if card else None, tokenizer, say=say)
        references = (
            reference_answers(merged, tokenizer, prompts, plan.check_tokens) if plan.check_tokens else []
        )
        same_weights = {  # what each lossless variant is compared with: PyTorch on the same stored weights
            "f16": lambda: f16_weights(merged),
            "lora": lambda: lora_reference,
        }
        reports = []
        for variant in plan.variants:
            say(f"writing {plan.format} {variant}")
            path = staging / f"{adapter.name}-{variant}{SUFFIX[plan.format]}"
            _write(plan.format, variant, merged, path, written)
            reference_model = same_weights[variant]() if variant in same_weights and references else None
            checked = relogit(reference_model, references) if reference_model is not None else references
            report = _check(
                variant, plan, path, written.base_f16 if variant == "lora" else None, checked, prompts[0]
            )
            say(_line(report))
            reports.append(report)
        export = ExportReport(
            adapter=card.name if card and card.name else adapter.name,
            base_model=str(merged.config.name_or_path or base),
            format=plan.format,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            variants=reports,
        )
        if plan.target:
            _fit(export, plan, staging)
        (staging / MANIFEST).write_text(export.to_json())
    return export


@dataclass
class Written:
    """What the writers need beside the merged model."""

    adapter: Path
    tokenizer: PreTrainedTokenizerBase
    source_gguf: Path | None  # the GGUF the base came from: its tokenizer metadata is copied
    scratch: Path
    say: Callable[[str], None]
    base_f16: Path | None = None  # the base alone as f16 GGUF, for the lora variant
    fp32_onnx: Path | None = None  # the merged model's fp32 ONNX once written: int8 quantizes it
    adapted: frozenset[str] | None = None  # the merged model's parameters the adapter changed
    size_budget: int | None = None  # bytes a q4_mix file must fit in (the target's)
    changes: dict[str, float] | None = None  # adapted parameter → ‖ΔW‖/‖W‖, to fit q4_mix to the budget

    def onnx(self, model: PreTrainedModel, path: Path) -> Path:
        """Export `model` to ONNX at `path` once; int8 then reuses it instead of exporting again."""
        from lorafleet.export.onnx_model import write_onnx

        self.fp32_onnx = write_onnx(model, path)
        return self.fp32_onnx

    def gguf(self, model: PreTrainedModel, path: Path, quant: str) -> Path:
        """Write `model` as a `quant` GGUF; a q4_mix over `size_budget` is written again with the fewest
        adapted matrices on the base's grid that bring it within (`gguf_quant`)."""
        from lorafleet.export.gguf_model import updates_to_give_up, write_gguf_model

        def write(adapted: frozenset[str] | None) -> Path:
            return write_gguf_model(
                model,
                self.tokenizer,
                path,
                quant=quant,  # type: ignore[arg-type]
                source_gguf=self.source_gguf,
                adapted=adapted,
            )

        write(self.adapted)
        if quant != "q4_mix" or self.size_budget is None or self.changes is None:
            return path
        excess = path.stat().st_size - self.size_budget
        if excess <= 0:
            return path
        given_up = updates_to_give_up(model, self.changes, excess)
        self.say(
            f"q4_mix is {excess:,} bytes over the target's {self.size_budget:,}: storing "
            f"{len(given_up)} of {len(self.changes)} adapted matrices on the base's grid, the smallest "
            f"updates ({', '.join(given_up)})"
        )
        return write(frozenset(self.adapted or self.changes).difference(given_up))


def relative_changes(merged: PreTrainedModel, base: PreTrainedModel) -> dict[str, float]:
    """‖W_merged − W_base‖ / ‖W_base‖ of every parameter the merge changed (all others are equal)."""
    before = dict(base.named_parameters())
    changes = {}
    with torch.no_grad():
        for name, weight in merged.named_parameters():
            change = float((weight - before[name]).norm())
            if change > 0:
                changes[name] = change / max(float(before[name].norm()), 1e-12)
    return changes


def adapted_parameters(model: PeftModel) -> frozenset[str]:
    """The parameters an adapter changes, named as `model.merge_and_unload()` leaves them: the weight of
    every module a tuner layer wraps (LoRA, DoRA) or PEFT trains a copy or rows of (`modules_to_save`,
    trainable tokens). A q4_mix GGUF keeps these off the base's Q4_1 grid (`gguf_quant`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return frozenset(
        f"{name.removeprefix('base_model.model.')}.weight"
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer | AuxiliaryTrainingWrapper)
    )


def f16_weights(model: M) -> M:
    """`model` with its base matrices rounded as an f16 GGUF stores them (1-D tensors stay f32, as there;
    a PEFT model's LoRA factors are kept, as llama.cpp keeps a GGUF LoRA's); a copy, but a PEFT model is
    rounded in place."""
    rounded = model if isinstance(model, PeftModel) else deepcopy(model)
    with torch.no_grad():
        for name, parameter in rounded.named_parameters():
            if parameter.dim() >= 2 and "lora_" not in name:
                parameter.copy_(parameter.half().float())
    return rounded


def relogit(model: PreTrainedModel, references: list[Reference]) -> list[Reference]:
    """The same prompts and answers with `model`'s logits."""
    return [Reference(r.ids, r.start, torch_logits(model, r.ids)) for r in references]


def _write(format: str, variant: str, merged: PreTrainedModel, path: Path, written: Written) -> None:
    if format == "gguf" and variant == "lora":
        from lorafleet.export.gguf_lora import write_gguf_lora

        write_gguf_lora(written.adapter, path, base_config=merged.config)
    elif format == "gguf":
        written.gguf(merged, path, variant)
    elif variant == "fp32":
        written.onnx(merged, path)
    else:
        from lorafleet.export.onnx_int8 import quantize_int8

        full = written.fp32_onnx or written.onnx(merged, written.scratch / "fp32.onnx")
        quantize_int8(full, path)  # blockwise: static and dynamic int8 lose the answers (onnx_int8 says why)


def _check(
    variant: str,
    plan: ExportPlan,
    path: Path,
    base_f16: Path | None,
    references: list[Reference],
    speed_prompt: list[int],
) -> VariantReport:
    from lorafleet.registry.artifacts import file_sha256

    report = VariantReport(f"{plan.format}-{variant}", path.name, path.stat().st_size, file_sha256(path))
    runtime = _runtime(plan.format, path, base_f16, plan.threads)
    try:
        if references:
            figures = agreement(runtime, references)
            report.max_abs_logit_diff = figures.max_abs_logit_diff
            report.top1_agreement = figures.top1_agreement
            report.mean_kl = figures.mean_kl
            report.checked_tokens = figures.answer_tokens
            enforce(variant, figures)
        report.tokens_per_s = tokens_per_second(runtime, speed_prompt, SPEED_TOKENS)
    finally:
        runtime.close()
    return report


def _runtime(format: str, path: Path, base_f16: Path | None, threads: int | None) -> EdgeRuntime:
    """The export in its runtime; a GGUF with an f32 KV cache, so the check sees the file's own error
    (llama.cpp's default f16 cache adds about 0.05 to the logits of SmolLM2-135M whatever the weights)."""
    if format == "gguf":
        from lorafleet.export.gguf_runtime import GgufRuntime

        if base_f16 is not None:
            return GgufRuntime(base_f16, lora=path, threads=threads, kv_cache="f32")
        return GgufRuntime(path, threads=threads, kv_cache="f32")
    from lorafleet.export.onnx_runtime import OnnxRuntime

    return OnnxRuntime(path, threads=threads)


def _fit(export: ExportReport, plan: ExportPlan, staging: Path) -> None:
    """Judge every variant against every profile, keep the one the target holds, drop the other files."""
    assert plan.target is not None
    profiles = load_profiles(plan.profiles_file)
    merged = [r for r in export.variants if r.name != f"{plan.format}-lora"]
    export.verdicts = [
        verdict(name, budget, report.measured()).as_dict()
        for name, budget in profiles.items()
        for report in merged
    ]
    chosen = choose(plan.target, profiles[plan.target], [r.measured() for r in merged])
    export.target, export.chosen = plan.target, chosen.name
    for report in merged:
        if report.name != chosen.name:
            (staging / report.file).unlink()
    export.variants = [r for r in export.variants if r.name == chosen.name or r not in merged]


def _line(report: VariantReport) -> str:
    figures = [f"{report.size_bytes / 1e6:.1f} MB", f"{report.tokens_per_s:.1f} tokens/s"]
    if report.checked_tokens:
        figures += [
            f"max |Δlogit| {report.max_abs_logit_diff:.2e}",
            f"top-1 {report.top1_agreement:.1%}",
            f"KL {report.mean_kl:.2e}",
        ]
    return f"{report.name}: " + ", ".join(figures)
