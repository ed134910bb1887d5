"""Fine-tuning: the training loop, its config, checkpoints, evaluation and the memory estimator."""

from lorafleet.training.config import FinetuneConfig, load_config, parse_config
from lorafleet.training.estimate import MemoryEstimate, ModelShape, estimate_memory, model_shape
from lorafleet.training.evaluate import EvalResult, evaluate_task, generate_answers, validation_loss
from lorafleet.training.loop import TrainResult, train
from lorafleet.training.metrics import JsonFieldScores, json_field_scores

__all__ = [
    "EvalResult",
    "FinetuneConfig",
    "JsonFieldScores",
    "MemoryEstimate",
    "ModelShape",
    "TrainResult",
    "estimate_memory",
    "evaluate_task",
    "generate_answers",
    "json_field_scores",
    "load_config",
    "model_shape",
    "parse_config",
    "train",
    "validation_loss",
]
