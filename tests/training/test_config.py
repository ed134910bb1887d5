"""`FinetuneConfig`: every shipped recipe loads, `--set` overrides parse as YAML, and bad keys or values
fail with a `ConfigError` that names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from lorafleet.errors import ConfigError
from lorafleet.training import FinetuneConfig, load_config, parse_config
from lorafleet.training.config import apply_override

RECIPES = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_there_are_recipes() -> None:
    assert len(RECIPES) >= 5, RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_says_how_to_run_it(path: Path) -> None:
    first_line = path.read_text().splitlines()[0]

    config = load_config(path)

    assert first_line.startswith(("# lorafleet train ", "# lorafleet federate ")), first_line
    assert f"configs/{path.name}" in first_line
    assert config.data.path


def test_defaults_need_only_a_data_path(lorafleet_home: Path) -> None:
    config = load_config(None, ["data.path=rows.jsonl"])

    assert config.model.name == "default"
    assert config.quantization.method == "none"
    assert (config.training.learning_rate, config.training.lr_scheduler) == (2e-4, "cosine")
    assert config.eval.metric == "none"
    assert config.adapter_dir() == lorafleet_home / "adapters" / "adapter"
    assert config.run_dir() == lorafleet_home / "runs" / "adapter"


def test_output_run_dir_overrides_the_default(tmp_path: Path) -> None:
    config = load_config(None, ["data.path=rows.jsonl", f"output.run_dir={tmp_path / 'here'}"])

    assert config.run_dir() == tmp_path / "here"


def test_every_field_is_documented() -> None:
    def fields(model: type[BaseModel], prefix: str) -> list[tuple[str, str | None]]:
        found = []
        for name, info in model.model_fields.items():
            kind = info.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found += fields(kind, f"{prefix}{name}.")
            else:
                found.append((f"{prefix}{name}", info.description))
        return found

    undocumented = [name for name, description in fields(FinetuneConfig, "") if not description]

    assert undocumented == []


# --- --set overrides -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.learning_rate=1e-4", 1e-4),  # PyYAML alone reads "1e-4" as a string
        ("training.learning_rate=3E-5", 3e-5),
        ("training.learning_rate=2.0e-3", 2e-3),
        ("training.learning_rate=0.01", 0.01),
        ("training.max_steps=30", 30),
        ("training.gradient_checkpointing=true", True),
        ("lora.target_modules=[q_proj, v_proj]", ["q_proj", "v_proj"]),
        ('data.system_prompt="Answer in JSON: one record."', "Answer in JSON: one record."),
        ("training.early_stopping_patience=null", None),
        (" model.name = /models/x=1", "/models/x=1"),
    ],
)
def test_override_values_are_read_as_yaml(override: str, expected: object) -> None:
    values: dict[str, object] = {}

    apply_override(values, override)

    section, field = override.split("=", 1)[0].strip().split(".")
    actual = values[section][field]  # type: ignore[index]
    assert actual == expected and type(actual) is type(expected)


def test_set_learning_rate_in_exponent_form_gives_a_float() -> None:
    config = load_config(None, ["data.path=rows.jsonl", "training.learning_rate=1e-4"])

    assert config.training.learning_rate == 1e-4
    assert isinstance(config.training.learning_rate, float)


def test_overrides_win_over_the_recipe(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("data:\n  path: a.jsonl\ntraining:\n  max_steps: 10\n  batch_size: 2\n")

    config = load_config(path, ["training.max_steps=3", "lora.r=4"])

    assert (config.training.max_steps, config.training.batch_size, config.lora.r) == (3, 2, 4)
    assert config.data.path == "a.jsonl"


@pytest.mark.parametrize("override", ["training.learning_rate", "=3", "  =3"])
def test_an_override_without_key_or_value_fails(override: str) -> None:
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        load_config(None, ["data.path=rows.jsonl", override])


def test_an_override_into_a_value_fails() -> None:
    with pytest.raises(ConfigError, match=r"'data\.path\.inner=1': path is not a section"):
        load_config(None, ["data.path=rows.jsonl", "data.path.inner=1"])


def test_an_override_with_bad_yaml_fails() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, ["data.path=rows.jsonl", "lora.target_modules=[q_proj"])


# --- unknown keys and out-of-range values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("training.learnin_rate=1e-4", "training.learnin_rate"),
        ("lora.rank=4", "lora.rank"),
        ("data.shuffle=true", "data.shuffle"),
        ("trainig.learning_rate=1e-4", "trainig"),  # an unknown section is named as such
    ],
)
def test_an_unknown_key_fails_naming_it(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.path=rows.jsonl", override])

    assert str(caught.value).startswith(f"overrides: {key}: Extra inputs are not permitted")


def test_an_unquoted_colon_makes_a_mapping_and_fails_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^overrides: data\.system_prompt: "):
        load_config(None, ["data.path=rows.jsonl", "data.system_prompt=Answer in JSON: one record."])


@pytest.mark.parametrize(
    "override",
    [
        "lora.r=0",
        "lora.dropout=1.0",
        "training.learning_rate=-1",
        "training.learning_rate=0",
        "training.batch_size=0",
        "training.max_steps=0",
        "training.warmup_ratio=0.9",
        "training.early_stopping_patience=0",
        "data.max_length=1",
        "data.validation_fraction=0.6",
        "eval.max_new_tokens=0",
        "training.lr_scheduler=step",
        "quantization.method=int8",
        "eval.metric=bleu",
        "model.device=tpu",
    ],
)
def test_an_out_of_range_value_fails_naming_the_key(override: str) -> None:
    key, value = override.split("=")

    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.path=rows.jsonl", override])

    message = str(caught.value)
    assert message.startswith(f"overrides: {key}: "), message
    assert value in message


def test_a_missing_data_path_fails_naming_it() -> None:
    with pytest.raises(ConfigError, match="data: Field required"):
        load_config(None, [])


def test_an_unsafe_output_name_fails() -> None:
    with pytest.raises(ConfigError, match=r"output\.name"):
        load_config(None, ["data.path=rows.jsonl", "output.name=../elsewhere"])


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^api: lora\.r: "):
        parse_config({"data": {"path": "rows.jsonl"}, "lora": {"r": 0}}, source="api")


# --- recipe files ----------------------------------------------------------------------------------------


def test_a_recipe_with_an_unknown_key_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("data:\n  path: rows.jsonl\ntraining:\n  learnin_rate: 1.0e-4\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value).startswith(f"{path}: training.learnin_rate: ")


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  path: [rows.jsonl\n")

    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_config(path)

    assert str(path) in str(caught.value)


def test_a_recipe_that_is_not_a_mapping_fails(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- data\n- lora\n")

    with pytest.raises(ConfigError, match="mapping of sections") as caught:
        load_config(path)

    assert str(path) in str(caught.value)


def test_a_missing_recipe_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_config(tmp_path / "absent.yaml")


def test_an_empty_recipe_plus_overrides_is_enough(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing but a comment\n")

    config = load_config(path, ["data.path=rows.jsonl"])

    assert config.data.path == "rows.jsonl"


# --- continual: training from a parent -------------------------------------------------------------------


def test_continual_defaults_to_none_without_a_parent() -> None:
    config = load_config(None, ["data.path=rows.jsonl"])

    assert config.continual.strategy == "none"
    assert config.model.parent is None


@pytest.mark.parametrize(
    ("overrides", "field", "needle"),
    [
        (["continual.strategy=ewc"], "continual.strategy", "no parent is given"),
        (["continual.strategy=orthogonal"], "continual.strategy", "no parent is given"),
        (["model.parent=p", "continual.strategy=replay"], "continual.replay_paths", "replay needs"),
        (
            [
                "model.parent=p",
                "continual.strategy=replay",
                "continual.replay_paths=[old.jsonl]",
                "data.packing=true",
            ],
            "data.packing",
            "not packed",
        ),
        (["continual.rehearsal_share=0.25", "data.packing=true"], "data.packing", "not packed"),
        (
            [
                "model.parent=p",
                "continual.strategy=replay",
                "continual.replay_paths=[old.jsonl]",
                "continual.replay_share=0.5",
                "continual.rehearsal_share=0.5",
            ],
            "continual.rehearsal_share",
            "leaving no new rows",
        ),
        (["continual.rehearsal_share=0.01"], "continual.rehearsal_share", "rounds to 0 rows"),
        (["model.parent=p@3"], "model.parent", "registry version"),
        (
            ["model.parent=p", "continual.ewc_lambda=5"],
            "continual",  # the section's own check, across its fields
            "only apply to strategy 'ewc'",
        ),
    ],
)
def test_a_continual_section_that_does_not_fit_fails_naming_the_field(
    overrides: list[str], field: str, needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle) as err:
        load_config(None, ["data.path=rows.jsonl", *overrides])

    assert err.value.field == field
    assert str(err.value).startswith(f"overrides: {field}")
