"""The `lorafleet` command line through Typer's `CliRunner`: help, one-line errors, the adapter workflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import Result
from transformers import AutoModelForCausalLM

from lorafleet import __version__
from lorafleet.adapters import LoraSettings, attach, load_adapter, save_adapter
from lorafleet.models import load_base, tiny_model
from tests.helpers import assert_friendly_error, invoke

COMMANDS = {
    (): ["models", "adapters", "data", "generate", "train", "eval", "chat", "estimate"],
    ("models",): ["list", "pull"],
    ("data",): ["stats", "example"],
    ("adapters",): ["create", "inspect", "merge", "combine"],
}
SUBCOMMANDS = [("models", "list"), ("models", "pull"), *[("adapters", c) for c in COMMANDS[("adapters",)]]]


def create(name: str, tiny_dir: Path, *extra: str) -> Result:
    return invoke("adapters", "create", name, "--model", str(tiny_dir), *extra)


# --- help and version --------------------------------------------------------------------------------------


def test_version() -> None:
    result = invoke("--version")

    assert result.exit_code == 0
    assert result.stdout.strip() == f"lorafleet {__version__}"


@pytest.mark.parametrize("group", list(COMMANDS))
def test_help_lists_every_command(group: tuple[str, ...]) -> None:
    result = invoke(*group, "--help")

    assert result.exit_code == 0, result.output
    listed = {line.strip("│ ").split(" ")[0] for line in result.stdout.splitlines()}
    assert set(COMMANDS[group]) <= listed, result.stdout


@pytest.mark.parametrize("command", [*SUBCOMMANDS, ("generate",)], ids=" ".join)
def test_every_subcommand_has_help(command: tuple[str, ...]) -> None:
    result = invoke(*command, "--help")

    assert result.exit_code == 0, result.output
    assert f"Usage: lorafleet {' '.join(command)}" in result.stdout


def test_no_arguments_shows_help() -> None:
    result = invoke()

    assert "Usage: lorafleet" in result.output
    assert "Traceback" not in result.output


# --- errors: exit code 2, one or two lines, no traceback ---------------------------------------------------


def test_inspect_missing_adapter() -> None:
    assert_friendly_error(invoke("adapters", "inspect", "/nonexistent"), "/nonexistent", "no such adapter")


def test_inspect_truncated_adapter(tmp_path: Path) -> None:
    model, _ = tiny_model("llama")
    path = save_adapter(attach(model, LoraSettings(r=4, target_modules=["q_proj"])), tmp_path / "cut")
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    assert_friendly_error(invoke("adapters", "inspect", str(path)), str(weights), "truncated")


def test_inspect_a_model_directory_is_not_an_adapter(tiny_dir: Path) -> None:
    assert_friendly_error(invoke("adapters", "inspect", str(tiny_dir)), "adapter_config.json")


@pytest.mark.parametrize(
    ("name", "problem"), [("bad/name", "path separator"), ("../x", "path separator"), (".x", "starting with")]
)
def test_create_rejects_unsafe_names(name: str, problem: str, lorafleet_home: Path) -> None:
    assert_friendly_error(invoke("adapters", "create", name, "--model", "/unused"), f"'{name}'", problem)
    assert not (lorafleet_home / "adapters").exists()


def test_combine_rejects_rank_zero() -> None:
    assert_friendly_error(invoke("adapters", "combine", "x", "--from", "A", "--rank", "0"), "rank", "0")


def test_combine_rejects_unknown_method() -> None:
    assert_friendly_error(
        invoke("adapters", "combine", "x", "--from", "A", "--method", "avg"), "'avg'", "cat"
    )


def test_combine_rejects_one_weight_too_many() -> None:
    result = invoke("adapters", "combine", "x", "--from", "A", "--weight", "1", "--weight", "2")
    assert_friendly_error(result, "1 adapters, 2 weights")


def test_pull_missing_gguf() -> None:
    assert_friendly_error(invoke("models", "pull", "/no/such.gguf"), "/no/such.gguf")


def test_pull_corrupt_gguf(tmp_path: Path, lorafleet_home: Path) -> None:
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"definitely not gguf" * 8)

    assert_friendly_error(invoke("models", "pull", str(fake)), str(fake))
    assert not any((lorafleet_home / "models").iterdir())


def test_generate_missing_model() -> None:
    assert_friendly_error(invoke("generate", "--model", "/no/such/dir", "hi"), "/no/such/dir")


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--temperature", "-1", "temperature"),
        ("--top-p", "0", "top_p"),
        ("--max-tokens", "0", "max_tokens"),
        ("--device", "toaster", "'toaster'"),
        ("--dtype", "float8", "'float8'"),
    ],
)
def test_generate_rejects_bad_settings(option: str, value: str, needle: str, tiny_dir: Path) -> None:
    assert_friendly_error(invoke("generate", "--model", str(tiny_dir), option, value, "hi"), needle)


def test_generate_with_a_missing_adapter(tiny_dir: Path) -> None:
    assert_friendly_error(invoke("generate", "--model", str(tiny_dir), "--adapter", "nope", "hi"), "nope")


# --- the adapter workflow on a tiny model ------------------------------------------------------------------


def test_create_writes_a_named_adapter(tiny_dir: Path, lorafleet_home: Path) -> None:
    result = create("support-v2", tiny_dir, "--r", "4", "--target", "q_proj")

    assert result.exit_code == 0, result.output
    folder = lorafleet_home / "adapters" / "support-v2"
    assert {p.name for p in folder.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "lorafleet.json",
    }
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4
    assert str(folder) in result.stdout
    assert "trainable params: 512" in result.stdout  # 2 layers × q_proj × r·(in + out) = 2·4·(32 + 32)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_create_an_existing_adapter_fails(tiny_dir: Path) -> None:
    assert create("twice", tiny_dir, "--r", "4", "--target", "q_proj").exit_code == 0

    assert_friendly_error(create("twice", tiny_dir, "--r", "4", "--target", "q_proj"), "already exists")


def test_create_with_unknown_target_lists_linear_modules(tiny_dir: Path, lorafleet_home: Path) -> None:
    message = assert_friendly_error(
        create("x", tiny_dir, "--target", "nonexistent_proj"), "'nonexistent_proj'"
    )

    for name in ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]:
        assert name in message
    assert not (lorafleet_home / "adapters" / "x").exists()


def test_create_with_rank_zero_names_the_field(tiny_dir: Path) -> None:
    assert_friendly_error(create("x", tiny_dir, "--r", "0"), "lora.r")


def test_inspect_shows_rank(tiny_dir: Path) -> None:
    assert create("one", tiny_dir, "--r", "4", "--alpha", "8", "--target", "q_proj").exit_code == 0

    result = invoke("adapters", "inspect", "one")

    assert result.exit_code == 0, result.output
    assert "4 / 8" in result.stdout  # rank / alpha
    assert "q_proj  (2 modules)" in result.stdout
    assert "create" in result.stdout  # lineage


def test_inspect_json(tiny_dir: Path, lorafleet_home: Path) -> None:
    assert create("one", tiny_dir, "--r", "4", "--target", "q_proj", "--target", "v_proj").exit_code == 0

    result = invoke("adapters", "inspect", "one", "--json")

    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["rank"] == 4
    assert info["name"] == "one"
    assert info["targets"] == ["q_proj", "v_proj"]
    assert info["modules"] == 4
    # 2 layers × r·(in + out) for q_proj (32 → 32) and v_proj (32 → 16: 2 kv heads of 8 dims)
    assert info["parameters"] == 2 * 4 * ((32 + 32) + (32 + 16))
    assert info["path"] == str(lorafleet_home / "adapters" / "one")
    assert info["lineage"]["method"] == "create"


def test_combine_cat_adds_ranks_and_records_lineage(tiny_dir: Path, lorafleet_home: Path) -> None:
    assert create("first", tiny_dir, "--r", "4", "--target", "q_proj").exit_code == 0
    assert create("second", tiny_dir, "--r", "4", "--target", "q_proj").exit_code == 0

    result = invoke("adapters", "combine", "mix", "--from", "first", "--from", "second", "--method", "cat")

    assert result.exit_code == 0, result.output
    table = invoke("adapters", "inspect", "mix")
    assert table.exit_code == 0, table.output
    assert "8 / 8" in table.stdout
    info = json.loads(invoke("adapters", "inspect", "mix", "--json").stdout)
    assert info["rank"] == 8
    assert info["lineage"]["method"] == "combine:cat"
    adapters = lorafleet_home / "adapters"
    assert info["lineage"]["parents"] == [str(adapters / "first"), str(adapters / "second")]
    assert info["lineage"]["weights"] == [1.0, 1.0]


def test_inspect_table_shows_lineage_literally(tiny_dir: Path) -> None:
    assert create("first", tiny_dir, "--r", "4", "--target", "q_proj").exit_code == 0
    assert invoke("adapters", "combine", "mix", "--from", "first", "--method", "cat").exit_code == 0

    result = invoke("adapters", "inspect", "mix")

    assert "combine:cat" in result.stdout


def test_inspect_table_shows_a_path_with_brackets_literally(tmp_path: Path) -> None:
    model, _ = tiny_model("llama")
    path = save_adapter(attach(model, LoraSettings(r=2, target_modules=["q_proj"])), tmp_path / "a[/]b")

    result = invoke("adapters", "inspect", str(path))

    assert result.exit_code == 0, result.exception
    assert "a[/]b" in result.stdout


def test_merge_writes_a_model_transformers_loads_alone(
    tiny_dir: Path, random_adapter: Path, lorafleet_home: Path
) -> None:
    input_ids = torch.randint(0, 256, (2, 6))
    base, _ = load_base(str(tiny_dir), device="cpu")
    with torch.no_grad():
        before = base(input_ids=input_ids).logits  # (B, T, vocab)
        expected = load_adapter(base, random_adapter)(input_ids=input_ids).logits

    result = invoke("adapters", "merge", "rand", "--name", "merged", "--model", str(tiny_dir))

    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(lorafleet_home / "models" / "merged")
    assert not any("lora" in key for key in merged.state_dict())
    with torch.no_grad():
        actual = merged(input_ids=input_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(actual, before, atol=1e-4), "the random adapter should change the logits"


def test_merge_onto_another_base_fails(tmp_path: Path, random_adapter: Path) -> None:
    other, tokenizer = tiny_model("llama", seed=1)
    other.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")

    result = invoke("adapters", "merge", "rand", "--name", "merged", "--model", str(tmp_path / "other"))

    assert_friendly_error(result, "rand", "trained on base")


def test_merge_refuses_to_overwrite(tiny_dir: Path, random_adapter: Path) -> None:
    assert invoke("adapters", "merge", "rand", "--name", "merged", "--model", str(tiny_dir)).exit_code == 0

    result = invoke("adapters", "merge", "rand", "--name", "merged", "--model", str(tiny_dir))

    assert_friendly_error(result, "already exists")


def test_generate_with_a_tiny_model(tiny_dir: Path) -> None:
    result = invoke("generate", "--model", str(tiny_dir), "--max-tokens", "5", "hello")

    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n")


def test_generate_with_an_adapter(tiny_dir: Path, random_adapter: Path) -> None:
    result = invoke(
        "generate", "--model", str(tiny_dir), "--adapter", "rand", "--max-tokens", "3", "--no-chat", "hi"
    )

    assert result.exit_code == 0, result.output


def test_models_list_shows_the_default() -> None:
    result = invoke("models", "list")

    assert result.exit_code == 0, result.output
    assert "default" in result.stdout
