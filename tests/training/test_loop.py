"""`train` on a tiny llama: the loss falls, kills and Ctrl-C resume exactly, QLoRA trains on the CPU,
gradient accumulation averages over tokens, and a run leaves its adapter, metrics, curve and summary."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lorafleet.adapters import load_adapter, read_adapter
from lorafleet.errors import AlreadyExistsError, ConfigError, TrainingInterrupted
from lorafleet.models import load_base, tiny_model
from lorafleet.training import FinetuneConfig, TrainResult, load_config, train
from lorafleet.training import loop as training_loop
from lorafleet.training.attention import RECOMPUTED_EAGER
from lorafleet.training.checkpoint import ADAPTER_DIR, STATE_FILE
from lorafleet.training.precision import cpu_has_bf16
from tests.training.conftest import RecipeFactory, write_jsonl

RECIPES = Path(__file__).parents[2] / "configs"


def run(
    config: FinetuneConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    error: type[BaseException] = RuntimeError,
) -> tuple[TrainResult | None, list[dict[str, Any]]]:
    """`train` quietly; returns (result or None, the step records seen). `stop_at` raises `error` there."""
    records: list[dict[str, Any]] = []

    def on_step(record: dict[str, Any]) -> None:
        records.append(record)
        if record["step"] == stop_at:
            raise error("stopped by the test")

    try:
        result = train(config, resume=resume, show_progress=False, log=lambda _: None, on_step=on_step)
    except error:
        return None, records
    return result, records


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_names(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --- it learns -------------------------------------------------------------------------------------------


def test_loss_falls(recipe: RecipeFactory) -> None:
    # The random tiny model's logits are near uniform (loss ≈ ln 260); adapting the output head lets
    # 20 steps on four repeated answers bring the loss well down.
    config = recipe("training.max_steps=20", "lora.target_modules=[q_proj, v_proj, lm_head]")

    _, records = run(config)

    losses = [r["loss"] for r in records]
    assert len(losses) == 20
    assert losses[0] == pytest.approx(math.log(260), abs=0.1)
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 instructions")
def test_bf16_on_a_cpu_with_bf16_instructions_trains_close_to_fp32(recipe: RecipeFactory) -> None:
    settings = ("training.max_steps=6", "lora.target_modules=[q_proj, v_proj, lm_head]")
    full, full_records = run(recipe(*settings, "output.name=fp32", "training.mixed_precision=no"))
    half, half_records = run(recipe(*settings, "output.name=bf16", "training.mixed_precision=bf16"))

    assert full is not None and half is not None
    assert (full.summary["mixed_precision"], half.summary["mixed_precision"]) == ("no", "bf16")
    full_losses = torch.tensor([r["loss"] for r in full_records])
    half_losses = torch.tensor([r["loss"] for r in half_records])
    assert not torch.equal(full_losses, half_losses)  # bf16 matmuls really ran
    torch.testing.assert_close(half_losses, full_losses, rtol=0.02, atol=0)


def test_auto_attention_on_a_cpu_trains_the_adapter_sdpa_trains(
    recipe: RecipeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernels: list[str] = []
    forward = training_loop.causal_lm_loss

    def spy_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        kernels.append(model.get_base_model().config._attn_implementation)
        return forward(model, batch)

    monkeypatch.setattr(training_loop, "causal_lm_loss", spy_step)
    common = ("training.mixed_precision=no", "lora.init=random")
    auto, _ = run(recipe(*common, "output.name=auto"))  # data.max_length 64 on a CPU: recomputed eager
    sdpa, _ = run(recipe(*common, "output.name=sdpa", "training.attention=sdpa"))
    longer, _ = run(recipe(*common, "output.name=long", "data.max_length=1024"))  # auto: the model's own

    assert auto is not None and sdpa is not None and longer is not None
    assert kernels == [RECOMPUTED_EAGER] * 4 + ["sdpa"] * 8
    _, eager_state, _ = read_adapter(auto.adapter_dir)
    _, sdpa_state, _ = read_adapter(sdpa.adapter_dir)
    for key in eager_state:
        torch.testing.assert_close(eager_state[key], sdpa_state[key], atol=1e-5, rtol=0)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 instructions")
def test_auto_precision_on_a_bf16_cpu_trains_a_bf16_base_and_scores_the_exact_fp32_one(
    recipe: RecipeFactory, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dtypes: list[torch.dtype] = []
    scored_dtypes: list[torch.dtype] = []
    forward, evaluate = training_loop.causal_lm_loss, training_loop.evaluate_model

    def spy_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        base_dtypes.append(model.get_base_model().model.embed_tokens.weight.dtype)
        return forward(model, batch)

    def spy_score(model: Any, *args: Any, **kwargs: Any) -> Any:  # what a projection computes in
        layer = model.get_base_model().model.layers[0].mlp.down_proj
        hook = layer.register_forward_hook(lambda _m, _i, out: scored_dtypes.append(out.dtype))
        model(torch.tensor([[1, 2, 3]]))
        hook.remove()
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(training_loop, "causal_lm_loss", spy_step)
    monkeypatch.setattr(training_loop, "evaluate_model", spy_score)
    config = recipe("training.max_steps=2", "lora.target_modules=[q_proj, v_proj]")

    result, _ = run(config)

    assert result is not None and result.summary["mixed_precision"] == "bf16"
    assert set(base_dtypes) == {torch.bfloat16}  # the steps ran on the bf16 copy of the base
    assert scored_dtypes == [torch.float32]  # and the adapter was scored on the fp32 base, no autocast
    # load_adapter refuses an adapter of another base: this one names the fp32 base
    model = load_adapter(load_base(str(tiny_dir), device="cpu")[0], result.adapter_dir)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    assert any(bool(p.abs().sum()) for n, p in lora.items() if "lora_B" in n)  # the steps trained it


def test_fp16_on_a_cpu_fails_naming_the_field(recipe: RecipeFactory) -> None:
    with pytest.raises(
        ConfigError, match=r"training.mixed_precision: fp16 needs a CUDA device \(running on cpu"
    ):
        run(recipe("training.max_steps=1", "training.mixed_precision=fp16", "model.device=cpu"))


def test_qlora_trains_on_cpu(recipe: RecipeFactory, tiny_dir: Path) -> None:
    config = recipe("quantization.method=nf4", "training.max_steps=8", "training.learning_rate=2e-2")

    result, records = run(config)

    losses = [r["loss"] for r in records]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-2:]) / 2 < losses[0], losses
    assert result is not None
    base, _ = tiny_model("llama")
    tokens = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        before = base(input_ids=tokens).logits  # (B, T, vocab)
        after = load_adapter(base, result.adapter_dir)(input_ids=tokens).logits
    assert not torch.allclose(before, after, atol=1e-4), "the QLoRA adapter should change the outputs"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_trains_a_step_on_the_tiny_model(
    path: Path, tiny_dir: Path, qa_file: Path, json_file: Path
) -> None:
    quick = ["training.max_steps=1", "eval.steps=1", "eval.generation_rows=2", "eval.max_new_tokens=4"]
    config = load_config(
        path, [f"model.name={tiny_dir}", f"data.path={qa_file}", f"eval.test_path={json_file}", *quick]
    )

    result, records = run(config)

    assert result is not None and [r["step"] for r in records] == [1]
    assert math.isfinite(records[0]["loss"]) and "eval_loss" in records[0]
    assert result.summary["trainable_parameters"] > 0


# --- resuming --------------------------------------------------------------------------------------------


def test_resume_after_a_kill_gives_the_same_later_losses(recipe: RecipeFactory) -> None:
    # Dropout makes the losses depend on the RNG, so resuming must restore it, not only the weights.
    settings = ("training.max_steps=8", "training.checkpoint_steps=4", "lora.dropout=0.1")
    _, straight = run(recipe(*settings, "output.name=straight"))
    killed = recipe(*settings, "output.name=killed")

    result, before_kill = run(killed, stop_at=6)
    assert result is None and [r["step"] for r in before_kill] == [1, 2, 3, 4, 5, 6]
    assert checkpoint_names(killed.run_dir()) == ["step-000004"]
    result, after = run(killed, resume=True)

    assert result is not None
    assert [r["step"] for r in after] == [5, 6, 7, 8]
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in after], dtype=torch.float64),
        torch.tensor([r["loss"] for r in straight[4:]], dtype=torch.float64),
        rtol=1e-5,
        atol=0,
    )
    torch.testing.assert_close(
        torch.tensor([r["learning_rate"] for r in after]),
        torch.tensor([r["learning_rate"] for r in straight[4:]]),
    )
    assert [m["step"] for m in metrics(killed.run_dir())] == list(range(1, 9))
    assert result.summary["steps"] == 8


def test_ctrl_c_leaves_a_loadable_checkpoint(recipe: RecipeFactory, tiny_dir: Path) -> None:
    config = recipe("training.max_steps=6", "training.checkpoint_steps=0")

    with pytest.raises(TrainingInterrupted, match="--resume") as caught:
        run(config, stop_at=3, error=KeyboardInterrupt)

    checkpoint = config.run_dir() / "checkpoints" / "step-000003"
    assert str(checkpoint) in str(caught.value)
    # checkpoint_steps=0: only the Ctrl-C checkpoint, and no staging directories left beside it.
    assert checkpoint_names(config.run_dir()) == ["step-000003"]
    assert (checkpoint / STATE_FILE).is_file()
    base, _ = tiny_model("llama")
    tokens = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        before = base(input_ids=tokens).logits  # (B, T, vocab)
        after = load_adapter(base, checkpoint / ADAPTER_DIR)(input_ids=tokens).logits
    assert not torch.allclose(before, after, atol=1e-4), "three steps should have trained B away from zero"
    assert not config.adapter_dir().exists()

    result, records = run(config, resume=True)

    assert [r["step"] for r in records] == [4, 5, 6]
    assert [m["step"] for m in metrics(config.run_dir())] == list(range(1, 7))
    assert result is not None and result.adapter_dir.is_dir()


def test_ctrl_c_inside_a_step_resumes_with_the_same_losses(
    recipe: RecipeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ("training.max_steps=5", "training.checkpoint_steps=0", "lora.dropout=0.1")
    _, straight = run(recipe(*settings, "output.name=straight"))
    forward = training_loop.causal_lm_loss
    calls = iter(range(1, 1000))

    def interrupted_in_step_3(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        result = forward(model, batch)  # draws its dropout masks, then Ctrl-C arrives
        if next(calls) == 3:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(training_loop, "causal_lm_loss", interrupted_in_step_3)
    config = recipe(*settings, "output.name=cut")
    with pytest.raises(TrainingInterrupted, match="interrupted at step 2"):
        run(config)
    monkeypatch.setattr(training_loop, "causal_lm_loss", forward)

    assert checkpoint_names(config.run_dir()) == ["step-000002"]
    _, after = run(config, resume=True)

    assert [r["step"] for r in after] == [3, 4, 5]
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in after], dtype=torch.float64),
        torch.tensor([r["loss"] for r in straight[2:]], dtype=torch.float64),
        rtol=1e-5,
        atol=0,
    )


def test_checkpoints_every_n_steps_keep_the_newest(recipe: RecipeFactory) -> None:
    config = recipe("training.max_steps=7", "training.checkpoint_steps=2", "training.keep_checkpoints=2")

    run(config)

    # Steps 2, 4 and 6 were saved; the oldest was dropped; the final step is the adapter itself.
    assert checkpoint_names(config.run_dir()) == ["step-000004", "step-000006"]
    state = torch.load(config.run_dir() / "checkpoints" / "step-000006" / STATE_FILE, weights_only=True)
    assert state["progress"]["step"] == 6


def test_checkpoint_steps_zero_writes_none(recipe: RecipeFactory) -> None:
    config = recipe("training.max_steps=3", "training.checkpoint_steps=0")

    run(config)

    assert checkpoint_names(config.run_dir()) == []


def test_resume_without_a_checkpoint_fails(recipe: RecipeFactory) -> None:
    config = recipe()

    with pytest.raises(ConfigError, match="no checkpoint to resume") as caught:
        run(config, resume=True)

    assert str(config.run_dir()) in str(caught.value)


def test_an_existing_adapter_fails_before_training(recipe: RecipeFactory) -> None:
    config = recipe("output.name=taken")
    config.adapter_dir().mkdir(parents=True)
    (config.adapter_dir() / "keep.txt").write_text("mine")

    with pytest.raises(AlreadyExistsError, match="overwrite") as caught:
        run(config, stop_at=1)

    assert "taken" in str(caught.value)
    assert (config.adapter_dir() / "keep.txt").read_text() == "mine"
    assert not config.run_dir().exists()


def test_resuming_a_finished_run_fails_before_training(recipe: RecipeFactory) -> None:
    config = recipe("training.checkpoint_steps=2")
    run(config)

    with pytest.raises(AlreadyExistsError):
        run(config, resume=True, stop_at=3)  # a step would raise RuntimeError instead


def test_overwrite_replaces_an_earlier_run(recipe: RecipeFactory) -> None:
    first, _ = run(recipe("training.checkpoint_steps=2"))
    assert first is not None

    second, records = run(recipe("training.checkpoint_steps=2", "output.overwrite=true"))

    assert second is not None and [r["step"] for r in records] == [1, 2, 3, 4]
    assert [m["step"] for m in metrics(second.run_dir)] == [1, 2, 3, 4]


# --- what a run leaves behind ----------------------------------------------------------------------------


def test_a_run_writes_metrics_curve_summary_and_adapter(recipe: RecipeFactory, tiny_dir: Path) -> None:
    config = recipe("training.max_steps=5", "output.name=outputs")

    result, records = run(config)

    assert result is not None
    assert result.adapter_dir == config.adapter_dir() and result.run_dir == config.run_dir()
    logged = metrics(result.run_dir)
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5]
    assert logged == json.loads(json.dumps(records))
    assert {"loss", "learning_rate", "grad_norm", "tokens", "tokens_per_second", "epoch"} <= set(logged[0])
    assert (result.run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["steps"] == 5
    # 2 layers × r·(in + out) for q_proj (32 → 32) and v_proj (32 → 16)
    assert summary["trainable_parameters"] == 2 * 4 * ((32 + 32) + (32 + 16))
    assert summary["tokens"] == logged[-1]["tokens"] > 0
    assert summary["tokens_per_second"] > 0
    assert summary["peak_memory_mb"] > 0
    assert summary["wall_seconds"] >= summary["train_seconds"] > 0
    assert summary["final_train_loss"] == pytest.approx(sum(m["loss"] for m in logged) / 5)
    assert set(summary["evaluation"]) == {"adapter"}
    assert summary["evaluation"]["adapter"]["loss"] > 0  # the validation rows (5% of 16 → 1 row)
    _, _, card = read_adapter(result.adapter_dir)
    assert card is not None
    assert card.name == "outputs"
    assert card.lineage.method == "train"
    assert card.training is not None and card.training["model"]["name"] == str(tiny_dir)
    assert card.training["training"]["max_steps"] == 5
    assert card.metrics["adapter"]["loss"] == pytest.approx(summary["evaluation"]["adapter"]["loss"])


def test_compare_base_scores_json_fields_before_and_after(recipe: RecipeFactory, json_file: Path) -> None:
    config = recipe(
        f"data.path={json_file}",
        "training.max_steps=2",
        "eval.metric=json_fields",
        f"eval.test_path={json_file}",
        "eval.compare_base=true",
        "eval.generation_rows=3",
        "eval.max_new_tokens=12",
    )

    result, _ = run(config)

    assert result is not None
    evaluation = result.summary["evaluation"]
    assert set(evaluation) == {"base", "adapter"}
    for scored in evaluation.values():
        assert {"valid_json", "field_accuracy", "exact_match"} <= set(scored["task"])
        assert scored["task"]["rows"] == 3
        assert set(scored["task"]["per_field"]) == {"n", "ok"}
        assert len(scored["samples"]) == 3
    saved = json.loads((result.run_dir / "summary.json").read_text())["evaluation"]
    assert saved["base"]["task"] == evaluation["base"]["task"]


@pytest.fixture
def scripted_validation_loss(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The periodic validation losses the loop sees, in order (the final evaluation is untouched)."""
    losses: list[float] = []
    calls = iter(range(1000))

    def fake(*args: object, **kwargs: object) -> tuple[float, float]:
        loss = losses[next(calls)]
        return loss, math.exp(loss)

    monkeypatch.setattr(training_loop, "validation_loss", fake)
    yield losses


def test_early_stopping_after_patience_evaluations_without_improvement(
    recipe: RecipeFactory, scripted_validation_loss: list[float]
) -> None:
    scripted_validation_loss += [3.0, 2.0, 2.5, 2.4, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    config = recipe("training.max_steps=10", "eval.steps=1", "training.early_stopping_patience=2")

    result, records = run(config)

    # Step 2 improved on step 1; steps 3 and 4 did not: two evaluations without improvement.
    assert result is not None and result.summary["steps"] == 4
    assert [r["eval_loss"] for r in records] == [3.0, 2.0, 2.5, 2.4]
    assert result.adapter_dir.is_dir()


def test_without_patience_training_runs_to_max_steps(
    recipe: RecipeFactory, scripted_validation_loss: list[float]
) -> None:
    scripted_validation_loss += [1.0, 2.0, 3.0, 4.0]
    config = recipe("training.max_steps=4", "eval.steps=2")

    result, records = run(config)

    assert result is not None and result.summary["steps"] == 4
    assert ["eval_loss" in r for r in records] == [False, True, False, True]


# --- the optimizer step ----------------------------------------------------------------------------------


def test_gradient_accumulation_averages_over_every_token_of_the_step(
    recipe: RecipeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Completions of different lengths: a mean of per-micro-batch means would weigh tokens unequally.
    rows = [{"prompt": "a", "completion": "x" * n} for n in (1, 3, 8, 20)]
    path = write_jsonl(tmp_path / "uneven.jsonl", rows)
    # Adam's first step is about lr·sign(g) and clipping rescales g, so both would hide a wrongly scaled
    # gradient; plain SGD without clipping moves the weights by exactly lr·g.
    monkeypatch.setattr(
        torch.optim, "AdamW", lambda params, lr, **_: torch.optim.SGD(params, lr=lr), raising=True
    )
    common = (
        f"data.path={path}",
        "data.validation_fraction=0",
        "training.max_steps=1",
        "training.learning_rate=1.0",
        "training.max_grad_norm=0",
        "lora.init=random",
        "training.mixed_precision=no",  # fp32: bf16 rounds batches of 4 and of 2 differently
    )

    one, _ = run(recipe(*common, "training.batch_size=4", "output.name=one"))
    two, _ = run(
        recipe(*common, "training.batch_size=2", "training.gradient_accumulation_steps=2", "output.name=two")
    )

    assert one is not None and two is not None
    _, one_state, _ = read_adapter(one.adapter_dir)
    _, two_state, _ = read_adapter(two.adapter_dir)
    base = run(recipe(*common, "training.learning_rate=1e-9", "output.name=start"))[0]
    assert base is not None
    _, start_state, _ = read_adapter(base.adapter_dir)
    moved = max(float((one_state[k] - start_state[k]).abs().max()) for k in one_state)
    assert moved > 1e-3, "the step should move the adapter weights"
    for key in one_state:
        torch.testing.assert_close(two_state[key], one_state[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        # 8 steps, 2 of warmup; the rate recorded after step s is the one step s+1 will use.
        ("constant", [0.5, 1, 1, 1, 1, 1, 1, 1]),
        ("linear", [0.5, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0]),
        ("cosine", [0.5, 1, *[0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(1, 7)]]),
    ],
)
def test_learning_rate_schedules(recipe: RecipeFactory, scheduler: str, expected: list[float]) -> None:
    config = recipe(
        "training.max_steps=8",
        "training.warmup_ratio=0.25",
        f"training.lr_scheduler={scheduler}",
        "training.learning_rate=1e-2",
    )

    _, records = run(config)

    torch.testing.assert_close(
        torch.tensor([r["learning_rate"] for r in records], dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64) * 1e-2,
    )
