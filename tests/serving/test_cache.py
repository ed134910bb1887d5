"""Adapter cache: saved factors, LRU by count and bytes, single-flight loads, isolated failures, refusals."""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from lorafleet.adapters import LoraSettings, attach, base_identity
from lorafleet.adapters.identity import BaseIdentity
from lorafleet.adapters.storage import SIDECAR_FILE, WEIGHTS_FILE
from lorafleet.errors import AdapterError, BaseModelMismatchError, CorruptFileError
from lorafleet.models import tiny_model
from lorafleet.serving.cache import AdapterCache, DirectorySource, LoadedAdapter, linear_shapes, load_lora
from tests.helpers import AdapterFactory


@pytest.fixture
def identity(tiny_base: PreTrainedModel) -> BaseIdentity:
    return base_identity(tiny_base)


@pytest.fixture
def adapters(tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory) -> dict[str, Path]:
    """Three same-sized adapters a, b, c of the tiny base."""
    return {name: make_adapter(tiny_base, tmp_path / name, seed=i) for i, name in enumerate("abc")}


class BlockingSource:
    """A `DirectorySource` that counts `locate` calls and holds those of `blocked` until `release` is set."""

    def __init__(self, mapping: Mapping[str, Path], blocked: str) -> None:
        self.inner = DirectorySource(mapping)
        self.blocked = blocked
        self.release = threading.Event()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def locate(self, ref: str) -> Path:
        with self._lock:
            self.calls[ref] += 1
        if ref == self.blocked:
            assert self.release.wait(timeout=30), "test never released the blocked load"
        return self.inner.locate(ref)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.mark.parametrize(("rslora", "scale"), [(False, 8.0 / 4), (True, 8.0 / 2)])
def test_get_returns_the_saved_factors_scale_and_rank(
    tmp_path: Path,
    tiny_base: PreTrainedModel,
    identity: BaseIdentity,
    make_adapter: AdapterFactory,
    rslora: bool,
    scale: float,
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a", use_rslora=rslora)
    adapter = AdapterCache(identity).get(str(path))
    saved = load_file(str(path / WEIGHTS_FILE))
    assert adapter.ref == str(path) and adapter.path == path
    assert adapter.rank == 4 and adapter.scale == pytest.approx(scale)
    assert adapter.card is not None and adapter.card.base_model.fingerprint == identity.fingerprint
    expected_modules = {f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")}
    assert set(adapter.factors) == expected_modules
    nbytes = 0
    for module, (a, b) in adapter.factors.items():
        torch.testing.assert_close(a, saved[f"base_model.model.{module}.lora_A.weight"])
        torch.testing.assert_close(b, saved[f"base_model.model.{module}.lora_B.weight"])
        for tensor in (a, b):
            assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.is_contiguous()
            nbytes += tensor.numel() * 4
        assert a.shape == (4, 32) and b.shape[1] == 4
    assert adapter.nbytes == nbytes


def test_lru_by_count_evicts_least_recently_used_and_reloads(
    identity: BaseIdentity, adapters: dict[str, Path]
) -> None:
    cache = AdapterCache(identity, source=DirectorySource(adapters), max_adapters=2)
    first_a = cache.get("a")
    cache.get("b")
    assert cache.get("a") is first_a  # a hit: a is now most recently used
    cache.get("c")
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2
    assert cache.stats().loads == 3 and cache.stats().hits == 1 and cache.stats().evictions == 1

    reloaded = cache.get("b")  # loaded again; a is now the least recently used
    assert reloaded.ref == "b"
    assert cache.stats().loads == 4 and cache.stats().evictions == 2
    assert "a" not in cache and "b" in cache and "c" in cache


def test_lru_by_bytes_and_an_adapter_over_the_limit(
    tmp_path: Path,
    tiny_base: PreTrainedModel,
    identity: BaseIdentity,
    make_adapter: AdapterFactory,
    adapters: dict[str, Path],
) -> None:
    size = load_lora(adapters["a"], ref="a").nbytes
    adapters["big"] = make_adapter(tiny_base, tmp_path / "big", r=16)
    cache = AdapterCache(identity, source=DirectorySource(adapters), max_bytes=2 * size)
    cache.get("a")
    cache.get("b")
    assert len(cache) == 2 and cache.nbytes == 2 * size
    cache.get("c")
    assert "a" not in cache and len(cache) == 2 and cache.nbytes == 2 * size
    assert cache.stats().evictions == 1

    with pytest.raises(AdapterError, match=r"'big' holds .* bytes of factors, more than .* max_bytes"):
        cache.get("big")
    assert "big" not in cache and len(cache) == 2 and cache.stats().failures == 1


def test_concurrent_first_requests_load_once_and_do_not_block_others(
    identity: BaseIdentity, adapters: dict[str, Path]
) -> None:
    source = BlockingSource(adapters, blocked="a")
    cache = AdapterCache(identity, source=source)
    cache.get("b")  # cached before the slow load starts
    with ThreadPoolExecutor(max_workers=10) as pool:
        waiting = [pool.submit(cache.get, "a") for _ in range(8)]
        wait_until(lambda: cache.stats().misses == 1 + 8)  # all 8 are in: one loads, seven wait
        # While a's load is held: a hit and the load of another adapter both go through.
        assert pool.submit(cache.get, "b").result(timeout=30).ref == "b"
        assert pool.submit(cache.get, "c").result(timeout=30).ref == "c"
        assert not any(future.done() for future in waiting)
        source.release.set()
        results = [future.result(timeout=30) for future in waiting]
    assert source.calls["a"] == 1
    assert all(result is results[0] for result in results)
    assert isinstance(results[0], LoadedAdapter) and "a" in cache
    assert cache.stats().loads == 3 and cache.stats().failures == 0


def test_failed_load_fails_only_its_waiters_and_is_not_cached(
    identity: BaseIdentity, adapters: dict[str, Path]
) -> None:
    weights = adapters["a"] / WEIGHTS_FILE
    good_bytes = weights.read_bytes()
    weights.write_bytes(good_bytes[: len(good_bytes) // 2])  # truncated
    source = BlockingSource(adapters, blocked="a")
    cache = AdapterCache(identity, source=source)
    with ThreadPoolExecutor(max_workers=6) as pool:
        waiting = [pool.submit(cache.get, "a") for _ in range(4)]
        wait_until(lambda: cache.stats().misses == 4)
        assert pool.submit(cache.get, "b").result(timeout=30).ref == "b"
        source.release.set()
        errors = [future.exception(timeout=30) for future in waiting]
    assert all(isinstance(error, CorruptFileError) for error in errors)
    assert all(error is errors[0] for error in errors)  # the one failure, shared by every waiter
    assert str(weights) in str(errors[0]) and "truncated" in str(errors[0])
    assert "a" not in cache and "b" in cache
    assert cache.stats().failures == 1 and source.calls["a"] == 1

    weights.write_bytes(good_bytes)  # fixed: the next get tries again
    assert cache.get("a").ref == "a"
    assert source.calls["a"] == 2 and cache.stats().failures == 1


def test_evicted_while_loading_answers_its_waiters_but_is_not_cached(
    identity: BaseIdentity, adapters: dict[str, Path]
) -> None:
    source = BlockingSource(adapters, blocked="a")
    cache = AdapterCache(identity, source=source)
    with ThreadPoolExecutor(max_workers=2) as pool:
        loading = pool.submit(cache.get, "a")
        wait_until(lambda: cache.stats().misses == 1)
        assert cache.evict("a")
        source.release.set()
        assert loading.result(timeout=30).ref == "a"
    assert "a" not in cache and len(cache) == 0


def test_unexpected_source_error_names_the_ref(identity: BaseIdentity) -> None:
    class BrokenSource:
        def locate(self, ref: str) -> Path:
            raise RuntimeError("registry unreachable")

    cache = AdapterCache(identity, source=BrokenSource())
    with pytest.raises(AdapterError, match=r"'tenant-7/support'.*RuntimeError: registry unreachable"):
        cache.get("tenant-7/support")
    assert cache.stats().failures == 1 and len(cache) == 0


def test_adapter_of_another_base_is_refused(
    tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a")
    other = base_identity(tiny_model("llama", seed=1)[0])
    cache = AdapterCache(other)
    with pytest.raises(BaseModelMismatchError, match=r"module model\.embed_tokens differs"):
        cache.get(str(path))
    assert len(cache) == 0 and cache.stats().failures == 1


def test_plain_peft_adapter_with_other_shapes_is_refused_naming_the_module(
    tmp_path: Path, tiny_base: PreTrainedModel, identity: BaseIdentity, make_adapter: AdapterFactory
) -> None:
    wider, _ = tiny_model("llama", hidden_size=48)
    path = make_adapter(wider, tmp_path / "a")
    (path / SIDECAR_FILE).unlink()  # a plain PEFT adapter: only shapes can tell
    assert load_lora(path, ref="a").card is None
    cache = AdapterCache(identity, module_shapes=linear_shapes(tiny_base))
    with pytest.raises(BaseModelMismatchError, match=r"module model\.layers\.0\.self_attn\.q_proj maps 48"):
        cache.get(str(path))


def test_module_missing_from_the_served_base_is_refused(
    tmp_path: Path, tiny_base: PreTrainedModel, identity: BaseIdentity, make_adapter: AdapterFactory
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a")
    shapes = linear_shapes(tiny_base)
    del shapes["model.layers.1.self_attn.v_proj"]
    with pytest.raises(BaseModelMismatchError, match=r"model\.layers\.1\.self_attn\.v_proj, which is not"):
        AdapterCache(identity, module_shapes=shapes).get(str(path))


@pytest.mark.parametrize(
    ("settings", "feature"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "all"}, "trains biases"),
        ({"target_modules": ["embed_tokens"]}, "embedding LoRA"),
        ({"init": "pissa"}, "'pissa', which changes the base weights"),
    ],
)
def test_features_beyond_plain_lora_are_refused(
    tmp_path: Path,
    tiny_base: PreTrainedModel,
    identity: BaseIdentity,
    make_adapter: AdapterFactory,
    settings: dict[str, object],
    feature: str,
) -> None:
    path = make_adapter(tiny_base, tmp_path / "fancy", **settings)
    cache = AdapterCache(identity, source=DirectorySource({"fancy": path}))
    with pytest.raises(AdapterError, match=rf"adapter 'fancy' .*{feature}"):
        cache.get("fancy")
    assert "fancy" not in cache


def test_an_adapter_holding_the_whole_lm_head_says_what_is_refused(
    tmp_path: Path, tiny_base: PreTrainedModel, identity: BaseIdentity
) -> None:
    # PEFT's own save_pretrained stores lm_head's full weight beside its LoRA factors when it is a target.
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=2, target_modules=["q_proj", "lm_head"])
    with pytest.warns(UserWarning, match="save_embedding_layers"):
        get_peft_model(copy.deepcopy(tiny_base), config).save_pretrained(str(tmp_path / "head"))
    cache = AdapterCache(identity, source=DirectorySource({"head": tmp_path / "head"}))

    with pytest.raises(AdapterError) as caught:
        cache.get("head")

    message = str(caught.value)
    assert "adapter 'head'" in message and "lm_head.base_layer.weight: whole weights of lm_head" in message
    assert "does not adapt the output head" in message and "without lm_head in target_modules" in message
    assert "linear layers only" not in message  # lm_head is a linear layer: that was not the reason


def test_directory_source_finds_named_mapped_and_refuses_unknown(
    tmp_path: Path,
    lorafleet_home: Path,
    tiny_base: PreTrainedModel,
    identity: BaseIdentity,
    make_adapter: AdapterFactory,
) -> None:
    named = make_adapter(tiny_base, lorafleet_home / "adapters" / "support")
    mapped = make_adapter(tiny_base, tmp_path / "elsewhere", seed=1)
    source = DirectorySource({"billing": mapped})
    assert source.locate("support") == named
    assert source.locate("billing") == mapped
    assert source.locate(str(mapped)) == mapped
    for unknown in ("nope", "no such/path", "bad name!"):
        with pytest.raises(AdapterError, match="unknown adapter"):
            source.locate(unknown)
    assert AdapterCache(identity).get("support").path == named


def test_evict_clear_and_sizes(identity: BaseIdentity, adapters: dict[str, Path]) -> None:
    cache = AdapterCache(identity, source=DirectorySource(adapters))
    size = cache.get("a").nbytes
    cache.get("b")
    assert len(cache) == 2 and cache.nbytes == 2 * size
    assert cache.evict("a") and not cache.evict("a")
    assert "a" not in cache and cache.nbytes == size
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    assert cache.stats().evictions == 0  # explicit drops are not LRU evictions


def test_linear_shapes_lists_every_linear_layer(tiny_base: PreTrainedModel) -> None:
    shapes = linear_shapes(tiny_base)
    expected = {
        name: (module.in_features, module.out_features)
        for name, module in tiny_base.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    assert shapes == expected
    assert shapes["model.layers.0.self_attn.k_proj"] == (32, 16)  # 2 KV heads of 8
    assert shapes["model.layers.1.mlp.down_proj"] == (64, 32)
    wrapped = attach(copy.deepcopy(tiny_base), LoraSettings(r=2, target_modules=["q_proj"]))
    assert linear_shapes(wrapped) == expected  # a PEFT model's base, without its LoRA layers


def test_linear_shapes_reads_gpt2_conv1d_as_in_out() -> None:
    gpt2, _ = tiny_model("gpt2")
    shapes = linear_shapes(gpt2)
    assert shapes["transformer.h.0.attn.c_attn"] == (32, 96)  # Conv1D weight is (in, out)
    assert shapes["transformer.h.1.mlp.c_proj"] == (64, 32)


def test_cached_factors_survive_the_file_being_rewritten_in_place(
    tmp_path: Path, tiny_base: PreTrainedModel, identity: BaseIdentity, make_adapter: AdapterFactory
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a")
    adapter = AdapterCache(identity).get(str(path))
    expected = {module: (a.clone(), b.clone()) for module, (a, b) in adapter.factors.items()}
    (path / WEIGHTS_FILE).write_bytes(b"")  # truncated in place: a mapped tensor would now fault (SIGBUS)
    for module, (a, b) in adapter.factors.items():
        torch.testing.assert_close(a, expected[module][0])
        torch.testing.assert_close(b, expected[module][1])
