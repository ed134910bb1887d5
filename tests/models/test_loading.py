"""`load_base`, `ensure_pad_token`, device/dtype choice, atomic GGUF conversion, the rule for names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from lorafleet.errors import ConfigError, InvalidNameError, ModelLoadError
from lorafleet.home import MAX_NAME_LENGTH, validate_name
from lorafleet.models import choose_device, choose_dtype, ensure_pad_token, load_base, tiny_model
from lorafleet.models.bundled import MARKER_FILE, convert_gguf, list_local_models
from lorafleet.models.loading import PAD_TOKEN

ARCHS = ["llama", "qwen2", "gpt2"]


def save_tiny(folder: Path, arch: str = "llama", **kwargs: object) -> tuple[PreTrainedModel, Path]:
    model, tokenizer = tiny_model(arch, **kwargs)  # type: ignore[arg-type]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, folder


def tokenizer_without_pad() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level tokenizer: `<|endoftext|>` is EOS and UNK; no pad, no `<|pad|>`."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def gpt2_style_model(arch: str) -> PreTrainedModel:
    """A tiny model whose vocabulary is exactly `tokenizer_without_pad()`'s 257 ids, EOS 256, no pad."""
    model, _ = tiny_model(arch)  # type: ignore[arg-type]
    model.resize_token_embeddings(257)
    for config in (model.config, model.generation_config):
        config.pad_token_id = None
        config.bos_token_id = config.eos_token_id = 256
    return model


def logits_of(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits  # (B, T, vocab)


# --- load_base ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_load_base_of_saved_tiny_model_gives_same_logits(tmp_path: Path, arch: str) -> None:
    original, folder = save_tiny(tmp_path / arch, arch)
    input_ids = torch.randint(0, 256, (2, 9))

    loaded, tokenizer = load_base(str(folder), device="cpu")

    assert not loaded.training
    assert loaded.dtype == torch.float32
    assert tokenizer.chat_template is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert loaded.config.pad_token_id == tokenizer.pad_token_id
    torch.testing.assert_close(
        logits_of(loaded, input_ids), logits_of(original, input_ids), atol=1e-6, rtol=0
    )


def test_load_base_accepts_a_path_object(tmp_path: Path) -> None:
    _, folder = save_tiny(tmp_path / "tiny")

    model, _ = load_base(folder, device="cpu")

    assert model.device.type == "cpu"


@pytest.mark.parametrize("dtype", ["bfloat16", "bf16", torch.bfloat16])
def test_load_base_honours_dtype_override(tmp_path: Path, dtype: str | torch.dtype) -> None:
    _, folder = save_tiny(tmp_path / "tiny")

    model, _ = load_base(str(folder), device="cpu", dtype=dtype)

    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert logits_of(model, torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16


def test_load_base_rejects_an_unknown_dtype_before_loading(tmp_path: Path) -> None:
    _, folder = save_tiny(tmp_path / "tiny")

    with pytest.raises(ConfigError, match="float8"):
        load_base(str(folder), device="cpu", dtype="float8")


def test_load_base_replaces_a_pad_that_is_eos(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("llama")
    tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")

    loaded, loaded_tokenizer = load_base(str(tmp_path / "tiny"), device="cpu")

    assert loaded_tokenizer.pad_token == "<|unk|>"
    assert loaded.config.pad_token_id == loaded_tokenizer.unk_token_id
    assert loaded.generation_config.pad_token_id == loaded_tokenizer.unk_token_id


def test_load_base_adds_a_pad_token_and_grows_the_embeddings(tmp_path: Path) -> None:
    model = gpt2_style_model("llama")
    tokenizer = tokenizer_without_pad()
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")

    loaded, loaded_tokenizer = load_base(str(tmp_path / "tiny"), device="cpu")

    assert loaded_tokenizer.pad_token == PAD_TOKEN
    assert loaded_tokenizer.pad_token_id == 257 != loaded_tokenizer.eos_token_id
    assert loaded.config.pad_token_id == 257
    assert logits_of(loaded, torch.tensor([[1, 257]])).shape == (1, 2, 258)


# --- ensure_pad_token --------------------------------------------------------------------------------------


def test_ensure_pad_token_keeps_a_distinct_pad() -> None:
    model, tokenizer = tiny_model("llama")
    pad = tokenizer.pad_token_id
    model.config.pad_token_id = None

    ensure_pad_token(model, tokenizer)

    assert tokenizer.pad_token_id == pad != tokenizer.eos_token_id
    assert model.config.pad_token_id == pad
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings == 260


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pad", ["eos", None])
def test_ensure_pad_token_reuses_a_distinct_unk(arch: str, pad: str | None) -> None:
    model, tokenizer = tiny_model(arch)
    tokenizer.pad_token = tokenizer.eos_token if pad == "eos" else None
    vocab = len(tokenizer)

    ensure_pad_token(model, tokenizer)

    assert tokenizer.pad_token_id == tokenizer.unk_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert len(tokenizer) == vocab == model.get_input_embeddings().num_embeddings


@pytest.mark.parametrize("arch", ARCHS)
def test_ensure_pad_token_adds_pad_and_resizes_when_unk_is_eos(arch: str) -> None:
    model = gpt2_style_model(arch)
    tokenizer = tokenizer_without_pad()
    before_embed = model.get_input_embeddings().weight.detach().clone()
    before_head = model.get_output_embeddings().weight.detach().clone()
    assert tokenizer.pad_token_id is None and tokenizer.unk_token_id == tokenizer.eos_token_id

    ensure_pad_token(model, tokenizer)

    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.pad_token_id == 257
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embed.shape[0] == head.shape[0] == len(tokenizer) == 258
    torch.testing.assert_close(embed[:257], before_embed)  # existing rows are kept
    torch.testing.assert_close(head[:257], before_head)
    assert logits_of(model, torch.tensor([[3, tokenizer.pad_token_id]])).shape == (1, 2, 258)


def test_ensure_pad_token_adds_pad_when_there_is_no_unk() -> None:
    model, tokenizer = tiny_model("llama")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.unk_token = None

    ensure_pad_token(model, tokenizer)

    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)


# --- devices and dtypes ------------------------------------------------------------------------------------


def test_choose_device_honours_an_explicit_device() -> None:
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(torch.device("cpu")) == torch.device("cpu")
    assert choose_device("auto").type in {"cpu", "cuda", "mps"}
    assert choose_device(None) == choose_device("auto")


def test_choose_device_rejects_a_bad_device() -> None:
    with pytest.raises(ConfigError, match="'toaster'"):
        choose_device("toaster")


def test_choose_dtype() -> None:
    cpu = torch.device("cpu")
    assert choose_dtype(cpu) == torch.float32
    assert choose_dtype(cpu, "auto") == torch.float32
    assert choose_dtype(cpu, "bf16") == torch.bfloat16
    assert choose_dtype(cpu, "float16") == torch.float16
    assert choose_dtype(cpu, torch.float64) == torch.float64


@pytest.mark.parametrize("dtype", ["float8", "int8", "BF16", ""])
def test_choose_dtype_rejects_unknown_names(dtype: str) -> None:
    with pytest.raises(ConfigError, match=r"dtype .* is not one of .*bfloat16"):
        choose_dtype(torch.device("cpu"), dtype)


# --- bad specs ---------------------------------------------------------------------------------------------


def test_missing_path_is_a_model_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no such file") as caught:
        load_base(str(missing), device="cpu")
    assert str(missing) in str(caught.value)


def test_directory_without_config_is_a_model_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json") as caught:
        load_base(str(folder), device="cpu")
    assert str(folder) in str(caught.value)


def test_file_that_is_not_gguf_is_a_model_load_error(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match=r"\.gguf") as caught:
        load_base(str(weights), device="cpu")
    assert str(weights) in str(caught.value)


def test_directory_with_config_but_no_weights_is_a_model_load_error(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("llama")
    folder = tmp_path / "no-weights"
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(ModelLoadError) as caught:
        load_base(str(folder), device="cpu")
    assert str(folder) in str(caught.value)


def test_corrupt_gguf_is_a_model_load_error(tmp_path: Path, lorafleet_home: Path) -> None:
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"not a gguf file at all" * 4)
    with pytest.raises(ModelLoadError) as caught:
        load_base(str(fake), device="cpu")
    assert str(fake) in str(caught.value)
    assert not any((lorafleet_home / "models").iterdir())


@pytest.mark.parametrize("spec", ["org/no-such-model", "nonsense-model-name"])
def test_nonsense_spec_offline_is_a_model_load_error(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as caught:
        load_base(spec, device="cpu")
    assert spec in str(caught.value)


# --- GGUF conversion ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_gguf_reader(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make transformers "read" any `gguf_file=` as a tiny llama; returns the GGUF names it was asked for."""
    calls: list[str] = []
    real_model = transformers.AutoModelForCausalLM.from_pretrained
    real_tokenizer = transformers.AutoTokenizer.from_pretrained

    def model_from_pretrained(source: object, *args: object, **kwargs: object) -> PreTrainedModel:
        if "gguf_file" not in kwargs:
            return real_model(source, *args, **kwargs)
        calls.append(str(kwargs["gguf_file"]))
        return tiny_model("llama")[0]

    def tokenizer_from_pretrained(source: object, *args: object, **kwargs: object) -> PreTrainedTokenizerFast:
        if "gguf_file" not in kwargs:
            return real_tokenizer(source, *args, **kwargs)
        return tiny_model("llama")[1]

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from_pretrained)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer_from_pretrained)
    return calls


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    path = tmp_path / "downloads" / "SmolLM2-135M-Instruct.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def test_convert_gguf_writes_a_model_once(
    fake_gguf_reader: list[str], gguf_file: Path, lorafleet_home: Path
) -> None:
    target = convert_gguf(gguf_file, name="SmolLM2-135M-Instruct", model_id="org/SmolLM2")

    assert target == lorafleet_home / "models" / "SmolLM2-135M-Instruct"
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER_FILE} <= {
        p.name for p in target.iterdir()
    }
    marker = json.loads((target / MARKER_FILE).read_text())
    assert marker["id"] == "org/SmolLM2" and marker["source_bytes"] == 64
    assert [m.name for m in list_local_models()] == ["SmolLM2-135M-Instruct"]
    assert [p.name for p in target.parent.iterdir()] == ["SmolLM2-135M-Instruct"]  # no staging dir left

    convert_gguf(gguf_file, name="SmolLM2-135M-Instruct", model_id="org/SmolLM2")
    assert len(fake_gguf_reader) == 1, "a finished conversion of the same file is reused"
    convert_gguf(gguf_file, name="SmolLM2-135M-Instruct", model_id="org/SmolLM2", force=True)
    assert len(fake_gguf_reader) == 2


def test_load_base_of_gguf_converts_once_and_reports_its_id(
    fake_gguf_reader: list[str], gguf_file: Path
) -> None:
    model, tokenizer = load_base(str(gguf_file), device="cpu")
    again, _ = load_base(str(gguf_file), device="cpu")

    assert fake_gguf_reader == ["SmolLM2-135M-Instruct.gguf"]
    assert model.config.name_or_path == again.config.name_or_path == "SmolLM2-135M-Instruct"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    input_ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(logits_of(model, input_ids), logits_of(again, input_ids), atol=1e-6, rtol=0)


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_convert_gguf_failing_midway_leaves_nothing_behind(
    fake_gguf_reader: list[str],
    gguf_file: Path,
    lorafleet_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
) -> None:
    def save_half_then_fail(
        self: PreTrainedModel, folder: str | Path, *args: object, **kwargs: object
    ) -> None:
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 1000)  # a half-written shard
        raise error

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_half_then_fail)

    with pytest.raises(type(error)):
        convert_gguf(gguf_file, name="SmolLM2-135M-Instruct", model_id="org/SmolLM2")

    assert fake_gguf_reader, "the failure happened inside the conversion"
    assert list((lorafleet_home / "models").iterdir()) == []
    assert list_local_models() == []


def test_convert_gguf_failing_at_tokenizer_save_leaves_nothing_behind(
    fake_gguf_reader: list[str], gguf_file: Path, lorafleet_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: object, *args: object, **kwargs: object) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", fail)

    with pytest.raises(OSError, match="no space"):
        convert_gguf(gguf_file, name="SmolLM2-135M-Instruct", model_id="org/SmolLM2")

    assert list((lorafleet_home / "models").iterdir()) == []


def test_failed_forced_reconversion_keeps_the_previous_model(
    fake_gguf_reader: list[str], gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = convert_gguf(gguf_file, name="SmolLM2-135M-Instruct", model_id="org/SmolLM2")

    real_replace = os.replace

    def fail_to_publish(src: str, dst: str) -> None:
        """Moving the old model aside works; renaming the new one into place fails."""
        if Path(dst) == target and Path(src).name.startswith("."):
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr("lorafleet.files.os.replace", fail_to_publish)
    with pytest.raises(OSError, match="rename failed"):
        convert_gguf(gguf_file, name="SmolLM2-135M-Instruct", model_id="org/SmolLM2", force=True)

    assert (target / MARKER_FILE).is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no staging or aside dirs left


# --- names that become paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["support-v2", "a.b_c", "A1", "x" * MAX_NAME_LENGTH])
def test_validate_name_accepts_plain_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is empty"),
        ("..", r"contains '\.\.'"),
        ("a..b", r"contains '\.\.'"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("../x", "path separator"),
        ("x" * (MAX_NAME_LENGTH + 1), "65 characters; the limit is 64"),
        (" space", "may hold only letters"),
        ("-dash", "starting with a letter or digit"),
        (".hidden", "starting with a letter or digit"),
        ("tab\tname", "may hold only letters"),
    ],
)
def test_validate_name_rejects_unsafe_names(name: str, problem: str) -> None:
    with pytest.raises(InvalidNameError, match=problem):
        validate_name(name, what="adapter name")


def test_validate_name_says_what_was_named() -> None:
    with pytest.raises(InvalidNameError, match=r"^model name 'a/b'"):
        validate_name("a/b", what="model name")
    assert issubclass(InvalidNameError, ConfigError)
