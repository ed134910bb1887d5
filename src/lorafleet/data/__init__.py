"""Training data: rows from JSONL, CSV, Parquet or a datasets directory -> token ids with masked labels."""

from lorafleet.data.config import DataConfig
from lorafleet.data.dataset import (
    DataStats,
    PreparedData,
    batches,
    dataset_stats,
    packing_gain,
    prepare_data,
    split_indices,
)
from lorafleet.data.formats import Example, Message, ReadResult, read_examples, with_system_prompt
from lorafleet.data.packing import PackedSequence, collate, pack_examples, packed_attention_mask
from lorafleet.data.tokenize import (
    IGNORE_INDEX,
    TokenizedExample,
    inspect_rows,
    render_chat,
    tokenize_example,
)

__all__ = [
    "IGNORE_INDEX",
    "DataConfig",
    "DataStats",
    "Example",
    "Message",
    "PackedSequence",
    "PreparedData",
    "ReadResult",
    "TokenizedExample",
    "batches",
    "collate",
    "dataset_stats",
    "inspect_rows",
    "pack_examples",
    "packed_attention_mask",
    "packing_gain",
    "prepare_data",
    "read_examples",
    "render_chat",
    "split_indices",
    "tokenize_example",
    "with_system_prompt",
]
