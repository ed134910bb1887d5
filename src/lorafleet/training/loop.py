"""The fine-tuning loop: `train(config)` turns a recipe into a trained adapter and a run directory.

    setup     check outputs (and read the parent, `model.parent`) → load base → tokenize data (and the
              replay rows) → (score base) → (bf16 steps on a CPU: the frozen base cast to bf16,
              `precision`) → attach LoRA/QLoRA, or the parent's LoRA with its weights
              (`training.parent`), and its EWC anchor (`training.consolidation`), or the frozen parent
              beside a new adapter (`training.orthogonal`) → AdamW + schedule; only then, with
              everything the user gave checked, an earlier run's outputs go
    train     for each optimizer step: micro-batches of the step, loss averaged over every labelled
              token of the step (plus the EWC or orthogonal penalty), backward, clip, step; log,
              evaluate, checkpoint every N steps
    finish    (the base's fp32 weights loaded back) evaluate, save the adapter (PEFT files +
              lorafleet.json; orthogonal: parent + new adapter summed into one), curves and summary

Runs on `accelerate`: one process on CPU or one GPU, or several GPUs under `accelerate launch`
(each process takes every n-th micro-batch). Data order depends only on (seed, epoch), and
checkpoints hold the optimizer, schedule and RNG states, so a resumed run continues with the same
losses as one that was never stopped. Ctrl-C writes a checkpoint and raises `TrainingInterrupted`.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from lorafleet.adapters import attach, count_parameters, merge, save_adapter, unmerge
from lorafleet.adapters.attach import Quantization
from lorafleet.adapters.settings import LoraSettings
from lorafleet.adapters.storage import Lineage
from lorafleet.continual.replay import Pool, mixed_pools
from lorafleet.data import (
    IGNORE_INDEX,
    Example,
    PreparedData,
    TokenizedExample,
    batches,
    packing_gain,
    prepare_data,
    read_examples,
    with_system_prompt,
)
from lorafleet.errors import AlreadyExistsError, ConfigError, TrainingInterrupted
from lorafleet.models import load_base
from lorafleet.models.devices import choose_device
from lorafleet.training.checkpoint import (
    Progress,
    checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lorafleet.training.config import FinetuneConfig
from lorafleet.training.consolidation import elastic_anchor
from lorafleet.training.evaluate import EvalResult, evaluate_model, headline, validation_loss
from lorafleet.training.loss import causal_lm_loss
from lorafleet.training.orthogonal import (
    NEW_ADAPTER_DIR,
    OrthogonalSubspace,
    attach_orthogonal,
    new_adapter_settings,
    save_served_sum,
)
from lorafleet.training.parent import ParentAdapter, attach_parent, child_settings, read_parent
from lorafleet.training.precision import (
    accelerator_for,
    bf16_frozen_weights,
    mixed_precision,
    restore_weights,
    trains_base_in_bf16,
    use_attention,
)
from lorafleet.training.progress import TrainingProgress
from lorafleet.training.rehearsal import rehearsal_rows
from lorafleet.training.replay import read_replay_rows, replay_batches
from lorafleet.training.report import (
    CURVE_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    MetricsLog,
    peak_memory_mb,
    plot_losses,
    read_metrics,
    write_summary,
)

StepCallback = Callable[[dict[str, Any]], None]
# packing is suggested when it saves at least this share of token positions: it adds a block-diagonal mask
# per packed row, so a small saving does not pay (the demo's support tickets, where it computes 24% more
# positions, trained at 241 tokens/s packed against 281)
PACKING_WORTH = 0.2


@dataclass(frozen=True)
class TrainResult:
    """Where the outputs are and what the run measured (the contents of summary.json)."""

    adapter_dir: Path
    run_dir: Path
    summary: dict[str, Any]


def train(
    config: FinetuneConfig,
    *,
    resume: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Fine-tune `config.model` on `config.data` and save the adapter; see the module docstring."""
    from accelerate.utils import set_seed

    started = time.perf_counter()
    run_dir, adapter_dir = config.run_dir(), config.adapter_dir()
    _check_outputs(config, run_dir, adapter_dir, resume=resume)
    parent = read_parent(config.model.parent) if config.model.parent else None
    lora = _lora_settings(config, parent)
    set_seed(config.training.seed)
    device = choose_device(config.model.device)
    precision = mixed_precision(config, device)
    accelerator = accelerator_for(
        device,
        precision,
        log_with=None if config.training.tracker == "none" else config.training.tracker,
        project_dir=str(run_dir),
    )
    main = accelerator.is_main_process

    model, tokenizer = load_base(config.model.name, device=str(accelerator.device), dtype=config.model.dtype)
    data = prepare_data(config.data, tokenizer)
    say = log if main else _silent
    say(_describe_data(data, config))
    pools = _mixed_pools(config, model, tokenizer, say)
    eval_examples = _task_examples(config, data)

    evaluations: dict[str, EvalResult] = {}
    if config.eval.compare_base and not resume:
        evaluations["base"] = _evaluate(
            config,
            model,
            tokenizer,
            data,
            eval_examples,
            "base model",
            say,
            show_progress=show_progress and main,
        )
    _apply_liger(config, model, accelerator.device, say)
    use_attention(model, config, device)
    frozen = bf16_frozen_weights(model) if trains_base_in_bf16(config, device, precision) else {}
    peft_model, subspace = _attach(config, model, lora, parent, say)
    penalty = subspace.penalty if subspace is not None else None
    if parent is not None and config.continual.strategy == "ewc":
        ewc = elastic_anchor(
            peft_model,
            parent,
            config.data,
            lam=config.continual.ewc_lambda,
            fisher_rows=config.continual.fisher_rows,
            tokenizer=tokenizer,
            say=say,
            paths=config.continual.replay_paths,
        )
        penalty = ewc.penalty
    params = count_parameters(peft_model)
    say(f"LoRA r={lora.r}: {params.trainable:,} trainable of {params.total:,} parameters")

    accum = config.training.gradient_accumulation_steps
    micro_per_epoch = len(_epoch_batches(config, data, tokenizer, 0, accelerator, pools)[0])
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / accum))
    total_steps = config.training.max_steps or config.training.epochs * steps_per_epoch
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=config.training.learning_rate,
        weight_decay=config.training.weight_decay,
        fused=accelerator.device.type == "cuda" or None,
    )
    scheduler = learning_rate_schedule(config, optimizer, total_steps)
    peft_model, optimizer, scheduler = accelerator.prepare(peft_model, optimizer, scheduler)

    if main:
        _replace_earlier_run(run_dir, resume=resume)
    accelerator.wait_for_everyone()
    progress = Progress()
    if resume:
        last = checkpoints(run_dir)[-1]
        progress = load_checkpoint(last, _unwrap(accelerator, peft_model), optimizer, scheduler)
        say(f"resumed from step {progress.step} ({last})")
    metrics_log = MetricsLog(run_dir / METRICS_FILE, truncate_after_step=progress.step if resume else None)
    if config.training.tracker != "none":
        accelerator.init_trackers("lorafleet", config=_flat(config.model_dump(mode="json")))

    def checkpoint() -> Path:
        return save_checkpoint(
            run_dir,
            _unwrap(accelerator, peft_model),
            optimizer,
            scheduler,
            progress,
            keep=config.training.keep_checkpoints,
        )

    bar = TrainingProgress(total_steps, start=progress.step, enabled=show_progress and main)
    train_started, tokens_at_start = time.perf_counter(), progress.tokens
    pad_id = tokenizer.pad_token_id
    step_rng = None  # RNG states at the start of an unfinished step
    try:
        with bar:
            while progress.step < total_steps:
                epoch_batches, mixed = _epoch_batches(
                    config, data, tokenizer, progress.epoch, accelerator, pools
                )
                while progress.batch < len(epoch_batches) and progress.step < total_steps:
                    window = epoch_batches[progress.batch : progress.batch + accum]
                    step_rng = rng_state()
                    loss, grad_norm, tokens = optimizer_step(
                        config,
                        accelerator,
                        peft_model,
                        optimizer,
                        scheduler,
                        trainable,
                        window,
                        penalty=penalty,
                    )
                    progress.batch += len(window)
                    progress.step += 1
                    progress.tokens += tokens
                    step_rng = None
                    elapsed = time.perf_counter() - train_started
                    record = {
                        "step": progress.step,
                        "epoch": progress.epoch + progress.batch / len(epoch_batches),
                        "loss": loss,
                        "learning_rate": scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm,
                        "tokens": progress.tokens,
                        "tokens_per_second": (progress.tokens - tokens_at_start) / max(elapsed, 1e-9),
                    }
                    for index, pool in enumerate(pools):  # e.g. replay_rows: the parent's rows in this step
                        step_counts = mixed[progress.batch - len(window) : progress.batch]
                        record[f"{pool.name}_rows"] = sum(counts[index] for counts in step_counts)
                    if config.eval.steps and progress.step % config.eval.steps == 0 and data.validation:
                        record |= _periodic_eval(config, peft_model, data, pad_id, progress)
                    if main:
                        metrics_log.write(record)
                    if config.training.tracker != "none":
                        accelerator.log(record, step=progress.step)
                    bar.update(record)
                    if on_step is not None:
                        on_step(record)
                    every = config.training.checkpoint_steps  # 0: only on Ctrl-C
                    if every and progress.step % every == 0 and progress.step < total_steps and main:
                        checkpoint()
                    if _should_stop_early(config, progress):
                        say(f"early stopping at step {progress.step}: validation loss stopped improving")
                        total_steps = progress.step
                if progress.batch >= len(epoch_batches):
                    progress.epoch, progress.batch = progress.epoch + 1, 0
    except KeyboardInterrupt:
        if step_rng is not None:  # stopped inside a step: rewind its dropout draws, so a resume redoes them
            set_rng_state(step_rng)
        if main:
            path = checkpoint()
            raise TrainingInterrupted(
                f"interrupted at step {progress.step}; checkpoint saved in {path}; "
                "continue with `lorafleet train ... --resume`"
            ) from None
        raise
    train_seconds = time.perf_counter() - train_started

    model_out = _unwrap(accelerator, peft_model, finished=True)
    restore_weights(frozen, lambda: load_base(config.model.name, device=str(accelerator.device))[0])
    with _merged(model_out, quantized=config.quantization.method != "none"):
        evaluations["adapter"] = _evaluate(
            config,
            model_out,
            tokenizer,
            data,
            eval_examples,
            "adapter",
            say,
            show_progress=show_progress and main,
        )
    summary = {
        "adapter": str(adapter_dir),
        "run_dir": str(run_dir),
        "steps": progress.step,
        "epochs": progress.epoch + progress.batch / max(micro_per_epoch, 1),
        "final_train_loss": _recent_loss(run_dir / METRICS_FILE),
        "evaluation": {name: result.as_dict() for name, result in evaluations.items()},
        "trainable_parameters": params.trainable,
        "total_parameters": params.total,
        "tokens": progress.tokens,
        "tokens_per_second": (progress.tokens - tokens_at_start) / max(train_seconds, 1e-9),
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "peak_memory_mb": peak_memory_mb(accelerator.device),
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "data": {"train": data.train_stats.as_dict(), "validation": data.validation_stats.as_dict()},
    }
    if main:
        _save(config, model_out, parent, adapter_dir, run_dir, evaluations)
        if subspace is not None:
            summary["overlap"] = float(subspace.overlap().detach())
            summary["new_adapter"] = str(run_dir / NEW_ADAPTER_DIR)
        plot_losses(read_metrics(run_dir / METRICS_FILE), run_dir / CURVE_FILE, title=config.output.name)
        summary["loss_curve"] = str(run_dir / CURVE_FILE)
        write_summary(run_dir / SUMMARY_FILE, summary)
    accelerator.end_training()
    return TrainResult(adapter_dir=adapter_dir, run_dir=run_dir, summary=summary)


def _lora_settings(config: FinetuneConfig, parent: ParentAdapter | None) -> LoraSettings:
    """The trained adapter's settings: the recipe's; from a parent, the parent's (orthogonal: a new one's)."""
    if parent is None:
        return config.lora
    if config.continual.strategy == "orthogonal":
        return new_adapter_settings(parent, config.lora, config.continual)
    return child_settings(parent, config.lora)


def _attach(
    config: FinetuneConfig,
    model: torch.nn.Module,
    lora: LoraSettings,
    parent: ParentAdapter | None,
    say: Callable[[str], None],
) -> tuple[PeftModel, OrthogonalSubspace | None]:
    """A fresh trainable LoRA on `model`, or, training from a parent, one holding the parent's weights, or
    (orthogonal) the frozen parent beside a fresh one, with the subspace the penalty keeps it out of."""
    quantization: Quantization = "nf4" if config.quantization.method == "nf4" else None
    checkpointing = config.training.gradient_checkpointing
    if parent is None:
        return attach(model, lora, quantization, gradient_checkpointing=checkpointing), None
    if config.continual.strategy == "orthogonal":
        say(
            f"starting from parent {parent.path}, frozen (r={parent.settings.r}); strategy orthogonal: "
            f"a new adapter r={lora.r}, alpha={lora.alpha:g}, targets {lora.target_modules}, "
            f"λ {config.continual.orthogonal_lambda:g}"
        )
        return attach_orthogonal(
            model,
            parent,
            lora,
            lam=config.continual.orthogonal_lambda,
            quantization=quantization,
            gradient_checkpointing=checkpointing,
        )
    say(
        f"starting from parent {parent.path} (its LoRA settings: r={lora.r}, alpha={lora.alpha:g}, "
        f"targets {lora.target_modules}); strategy {config.continual.strategy}"
    )
    return attach_parent(model, parent, lora, quantization, gradient_checkpointing=checkpointing), None


def _save(
    config: FinetuneConfig,
    model: PeftModel,
    parent: ParentAdapter | None,
    adapter_dir: Path,
    run_dir: Path,
    evaluations: dict[str, EvalResult],
) -> None:
    """Write the version: the trained adapter, or (orthogonal) the parent and the new adapter summed."""
    training = config.model_dump(mode="json")
    metrics = {name: result.task or {"loss": result.loss} for name, result in evaluations.items()}
    if parent is not None and config.continual.strategy == "orthogonal":
        save_served_sum(
            model,
            parent,
            adapter_dir,
            run_dir,
            name=config.output.name,
            training=training,
            metrics=metrics,
            overwrite=config.output.overwrite,
        )
        return
    save_adapter(
        model,
        adapter_dir,
        name=config.output.name,
        training=training,
        metrics=metrics,
        lineage=parent.lineage(config.continual.strategy) if parent else Lineage(method="train"),
        overwrite=config.output.overwrite,
    )


def optimizer_step(
    config: FinetuneConfig,
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainable: list[torch.nn.Parameter],
    window: list[dict[str, torch.Tensor]],
    *,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> tuple[float, float | None, int]:
    """One optimizer step over the micro-batches in `window`: (mean token loss, grad norm, tokens).

    Public because federated clients (`federated.client`) take their local steps with it too. A `penalty`
    (EWC, FedProx's proximal term) is added to the step's loss with the last micro-batch; the loss reported
    excludes it.
    """
    model.train()
    label_tokens = sum(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in window)
    total = 0.0
    for i, batch in enumerate(window):
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        sync = contextlib.nullcontext() if i == len(window) - 1 else accelerator.no_sync(model)
        with sync, accelerator.autocast():
            loss_sum, _ = causal_lm_loss(model, batch)
            objective = loss_sum / max(label_tokens, 1)
            if penalty is not None and i == len(window) - 1:
                objective = objective + penalty()
            accelerator.backward(objective)
        total += loss_sum.item()
    grad_norm = None
    if config.training.max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(trainable, config.training.max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / max(label_tokens, 1), grad_norm, sum(_real_tokens(batch) for batch in window)


def _real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens in a micro-batch, padding excluded (packed rows are counted whole)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None and mask.dim() == 2 else batch["input_ids"].numel()


def _mixed_pools(
    config: FinetuneConfig, model: nn.Module, tokenizer: Any, say: Callable[[str], None]
) -> list[Pool[TokenizedExample]]:
    """The rows mixed into every step (`continual.replay`): the parent's under strategy replay, and the
    base's answers to the rehearsal prompts when `continual.rehearsal_share` > 0. `model` is the bare base."""
    continual, parent = config.continual, config.model.parent is not None
    replays = parent and continual.strategy == "replay"
    replay = read_replay_rows(config.data, continual, tokenizer) if replays else []
    rehearsal = rehearsal_rows(model, tokenizer, config.data) if continual.rehearsal_share > 0 else []
    pools = mixed_pools(continual, parent=parent, replay=replay, rehearsal=rehearsal)
    for pool in pools:
        say(f"{pool.field} {pool.share:g}: {len(pool.rows)} rows to mix into each step")
    return pools


def _epoch_batches(
    config: FinetuneConfig,
    data: PreparedData,
    tokenizer: Any,
    epoch: int,
    accelerator: Any,
    pools: list[Pool[TokenizedExample]],
) -> tuple[list[dict[str, torch.Tensor]], list[list[int]]]:
    """This process's micro-batches of `epoch` (every n-th batch under multi-process training), and how
    many rows of each pool each holds (none when no pool is mixed in)."""
    every, first = accelerator.num_processes, accelerator.process_index
    if pools:
        micro, mixed = replay_batches(
            data.train,
            pools,
            batch_size=config.training.batch_size,
            accumulation=config.training.gradient_accumulation_steps,
            pad_token_id=tokenizer.pad_token_id,
            seed=config.data.seed + config.training.seed,
            epoch=epoch,
        )
        return micro[first::every], mixed[first::every]
    mine = epoch_batches(config, data, tokenizer, epoch)[first::every]
    return mine, [[] for _ in mine]


def epoch_batches(
    config: FinetuneConfig, data: PreparedData, tokenizer: Any, epoch: int
) -> list[dict[str, torch.Tensor]]:
    """Every micro-batch of `epoch` of the training rows alone, in the order the loop trains them (what a
    side-by-side benchmark hands the peers, so all train on the same batches)."""
    return batches(
        data.train,
        batch_size=config.training.batch_size,
        pad_token_id=tokenizer.pad_token_id,
        max_length=config.data.max_length,
        packing=config.data.packing,
        shuffle=True,
        seed=config.data.seed + config.training.seed,
        epoch=epoch,
    )


def _evaluate(
    config: FinetuneConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    data: PreparedData,
    examples: list[Example],
    label: str,
    say: Callable[[str], None],
    *,
    show_progress: bool = True,
) -> EvalResult:
    """Validation loss (when there are validation rows) and the task metric (when configured)."""
    total = len(examples) if config.eval.metric != "none" else 0
    with TrainingProgress.counter(f"scoring {label}", total, enabled=show_progress and total > 0) as advance:
        result = evaluate_model(
            model,
            tokenizer,
            validation=data.validation,
            examples=examples,
            metric=config.eval.metric,
            max_length=config.data.max_length,
            max_new_tokens=config.eval.max_new_tokens,
            batch_size=config.eval.batch_size,
            on_batch=advance,
        )
    say(f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in headline(result).items()))
    return result


def _periodic_eval(
    config: FinetuneConfig, model: torch.nn.Module, data: PreparedData, pad_id: int, progress: Progress
) -> dict[str, float]:
    loss, perplexity = validation_loss(
        model,
        data.validation,
        batch_size=config.eval.batch_size,
        pad_token_id=pad_id,
        max_length=config.data.max_length,
    )
    if progress.best_eval_loss is None or loss < progress.best_eval_loss:
        progress.best_eval_loss, progress.evals_without_improvement = loss, 0
    else:
        progress.evals_without_improvement += 1
    return {"eval_loss": loss, "eval_perplexity": perplexity}


def _should_stop_early(config: FinetuneConfig, progress: Progress) -> bool:
    patience = config.training.early_stopping_patience
    return patience is not None and progress.evals_without_improvement >= patience


def _task_examples(config: FinetuneConfig, data: PreparedData) -> list[Example]:
    """Rows scored by generation: `eval.test_path` if given, else the validation rows."""
    if config.eval.metric == "none":
        return []
    if config.eval.test_path:
        read = read_examples(config.eval.test_path, format=data.format)
        rows = [with_system_prompt(e, config.data.system_prompt) for e in read.examples]
    else:
        rows = data.eval_examples
    return [row for row in rows if row.reference is not None][: config.eval.generation_rows]


def _check_outputs(config: FinetuneConfig, run_dir: Path, adapter_dir: Path, *, resume: bool) -> None:
    """Fail before any work if outputs would be clobbered, or if there is nothing to resume.

    Nothing is deleted here: an `--overwrite` run whose data, model or settings turn out bad must leave
    the earlier run (its checkpoints, which `--resume` needs) as it was; see `_replace_earlier_run`.
    """
    if resume and not checkpoints(run_dir):
        raise ConfigError(f"{run_dir}: no checkpoint to resume from; run without --resume")
    if adapter_dir.exists() and not config.output.overwrite:
        raise AlreadyExistsError(
            f"{adapter_dir}: adapter {config.output.name!r} exists; set output.overwrite (--overwrite) "
            "or choose another output.name"
        )
    if not resume and checkpoints(run_dir) and not config.output.overwrite:
        raise AlreadyExistsError(
            f"{run_dir}: holds checkpoints of an earlier run; continue it with --resume or start "
            "over with --overwrite"
        )


def _replace_earlier_run(run_dir: Path, *, resume: bool) -> None:
    """Remove what an earlier run left in `run_dir` (checkpoints, metrics, curve, summary) as a new one
    starts; a resumed run keeps it all. Called once the model, data and settings have been accepted, so a
    run that fails on them leaves the earlier one resumable. The earlier adapter stays until the new one
    replaces it (`save_adapter` swaps the directory atomically). Other files in `run_dir` are left alone.
    """
    if resume:
        return
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for name in (METRICS_FILE, CURVE_FILE, SUMMARY_FILE):
        (run_dir / name).unlink(missing_ok=True)


def learning_rate_schedule(
    config: FinetuneConfig, optimizer: torch.optim.Optimizer, total_steps: int, *, first_step: int = 0
) -> Any:
    """The recipe's `training.lr_scheduler` (with `warmup_ratio` of `total_steps` warming up) over
    `total_steps` steps, starting at step `first_step` (a federated client's round starts where the
    rounds before it left off)."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(
        config.training.lr_scheduler, config.training.lr_scheduler
    )
    warmup = round(config.training.warmup_ratio * total_steps)
    schedule = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    if first_step == 0:
        return schedule
    factor = schedule.lr_lambdas[0]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(first_step + step))


def _apply_liger(
    config: FinetuneConfig, model: torch.nn.Module, device: torch.device, say: Callable[[str], None]
) -> None:
    """Liger's Triton kernels (RMSNorm, RoPE, SwiGLU) on CUDA when liger-kernel is installed."""
    if not config.training.liger_kernels or device.type != "cuda":
        return
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        say("liger-kernel is not installed (pip install 'lorafleet[gpu]'); using plain transformers layers")
        return
    _apply_liger_kernel_to_instance(model=model)
    say("Liger kernels applied")


@contextlib.contextmanager
def _merged(model: PeftModel, *, quantized: bool) -> Iterator[None]:
    """Score with the adapter merged into the base weights (no LoRA matmuls); NF4 bases stay unmerged."""
    if quantized:
        yield
        return
    merge(model)
    try:
        yield
    finally:
        unmerge(model)


def _unwrap(accelerator: Any, model: torch.nn.Module, *, finished: bool = False) -> PeftModel:
    """The PEFT model inside accelerate's wrapping. `finished`: the steps are over, so the forward that
    runs under the steps' autocast (accelerate patches it in for mixed precision) is put back too, and
    the adapter is scored as it is served."""
    unwrapped: PeftModel = accelerator.unwrap_model(model, keep_fp32_wrapper=not finished)
    return unwrapped


def _describe_data(data: PreparedData, config: FinetuneConfig) -> str:
    """The training data in a line, with whether packing pays here (`data.dataset.packing_gain`)."""
    s = data.train_stats
    gain = packing_gain(data.train, batch_size=config.training.batch_size, max_length=config.data.max_length)
    positions = f"{abs(gain):.0%} {'fewer' if gain >= 0 else 'more'} token positions"
    if config.data.packing:
        packing = f"packing on ({positions} than batching by length)"
    elif gain >= PACKING_WORTH:
        packing = f"packing would compute {positions}: consider data.packing: true"
    else:
        packing = f"packing off (it would compute {positions})"
    return (
        f"data ({data.format}): {s.rows} training rows, {data.validation_stats.rows} validation; "
        f"{s.tokens:,} tokens ({s.label_tokens:,} with loss); length p50 {s.length_p50}, p90 {s.length_p90}, "
        f"max {s.length_max}; {s.truncated} truncated, {s.skipped} skipped; {packing}"
    )


def _recent_loss(path: Path, last: int = 10) -> float | None:
    losses = [m["loss"] for m in read_metrics(path) if "loss" in m][-last:]
    return sum(losses) / len(losses) if losses else None


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def _silent(_: str) -> None:
    pass
