"""Batched multi-LoRA linear layers: many adapters in one forward pass, each token with its own adapter.

A `MultiLoraLinear` wraps a frozen base layer W₀ (nn.Linear in fp32 or bf16, a bitsandbytes NF4
`Linear4bit`, or GPT-2's Conv1D) and holds adapters in numbered slots of stacked tensors. Each token t
of a batch carries a slot k(t); slot 0 is "no adapter" and holds zeros. For adapter k with factors
A_k (r_k × in), B_k (out × r_k) and scale s_k = α_k / r_k (rsLoRA: α_k / √r_k), token t computes

    y_t = W₀ x_t + s_k · B_k A_k x_t,    k = k(t)

The slots store A_kᵀ zero-padded to the layer's largest rank R (S × in × R) and (s_k·B_k)ᵀ likewise
(S × R × out), so the scale costs nothing at run time and the padding adds exact zeros. The low-rank
term is computed one of three ways, all exact:

- segments (a batch with one adapter, or long prompts): the N tokens are sorted into segments by
  slot, and each segment X_k (n_k × in) adds X_k · A_kᵀ · (s_k B_k)ᵀ with A_k and B_k sliced to their
  own rank r_k, so different ranks in one batch need no padding: one pair of thin matrix products per
  adapter present.
- gather (decode with several adapters; prefill of many short prompts): the slot tensors are gathered
  per row, A_g = Aᵀ[k] (B × in × R) and B_g = (s·B)ᵀ[k] (B × R × out), and two batched products give
  every token at once, bmm(bmm(X, A_g), B_g), whatever the number of distinct adapters (padding
  tokens are zeroed between the two).
- bags (decode with several adapters on a CPU in fp32): the same gather without the copy, through
  torch's `embedding_bag`. Token t's h_t = Σ_i x_t,i · Aᵀ_k(t)[i] is a weighted sum of the rows of its
  own slot in the (S·in) × R table of every Aᵀ (a view of the stack), and the product by (s·B)ᵀ is
  another over the (S·R) × out table. Each token reads its adapter's factors once; the gather writes
  a copy of them first, which on a CPU costs more than the products.

All wrapped layers of a model share one `LoraBatch`, the per-forward routing (which slot each token
uses), set by the caller before each forward pass. `AdapterSlots` is the device tier: which adapter
sits in which slot of every layer, least recently used first out, bounded by a slot count and by bytes,
never evicting an adapter pinned by a running request. `merge_into` is the other way to serve one
adapter: W₀ ← W₀ + s·B·A in the base weights, after which the model costs what the base does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorafleet.errors import AdapterError, BaseModelMismatchError, ConfigError

LoraPath = Literal["auto", "segments", "gather", "bags"]
SHORT_SEGMENT = 64  # prefill gathers per row when segments average fewer tokens than this
BASE_SLOT = 0  # the slot of "no adapter": always zeros


class LoraBatch:
    """Which adapter slot each token of the next forward pass uses; shared by a model's `MultiLoraLinear`s.

    `path` picks how the low-rank term is computed (see the module docstring): "auto" takes segments
    for one adapter, bags (a CPU in fp32) or gather to decode several, gather to prefill many short
    segments of rows routed whole, and segments otherwise; "segments", "gather" or "bags" force one.
    """

    def __init__(self, path: LoraPath = "auto") -> None:
        self.path: LoraPath = path
        self.route(None)

    def route(
        self, slots: torch.Tensor | Sequence[int] | None, token_mask: torch.Tensor | None = None
    ) -> None:
        """Route the next forward: `slots` is one slot per row (B,) or per token (B, T); None = base only.

        `token_mask` (B, T), when given, sends the tokens where it is 0 (padding) to the base alone.
        """
        self._slots = None if slots is None else torch.as_tensor(slots, dtype=torch.long)
        self._token_mask = token_mask
        self._cache: dict[tuple[int, int, str], object] = {}
        self.active = self._slots is not None and bool((self._slots != BASE_SLOT).any())

    def token_slots(self, rows: int, tokens: int, device: torch.device) -> torch.Tensor:
        """The slot of every token, flattened row-major: (rows · tokens,)."""
        key = (rows, tokens, f"slots:{device}")
        if key not in self._cache:
            assert self._slots is not None
            slots = self._slots.to(device)
            if slots.dim() == 1:
                slots = slots[:, None].expand(rows, tokens)  # (B, T)
            if self._token_mask is not None:
                slots = slots.masked_fill(self._token_mask[:, -tokens:].to(device) == 0, BASE_SLOT)
            self._cache[key] = slots.reshape(-1).contiguous()  # (N,)
        return self._cache[key]  # type: ignore[return-value]

    def segments(self, rows: int, tokens: int, device: torch.device) -> list[tuple[int, torch.Tensor]]:
        """Tokens sorted into segments by slot: (slot, token indices (n_k,)) for every slot but the base's."""
        key = (rows, tokens, f"segments:{device}")
        if key not in self._cache:
            flat = self.token_slots(rows, tokens, device)  # (N,)
            order = torch.argsort(flat, stable=True)  # (N,) token indices, grouped by slot
            present, counts = torch.unique_consecutive(flat[order], return_counts=True)
            pieces = torch.split(order, counts.tolist())
            self._cache[key] = [
                (int(slot), piece) for slot, piece in zip(present.tolist(), pieces, strict=True) if slot
            ]
        return self._cache[key]  # type: ignore[return-value]

    def choose(self, rows: int, tokens: int, x: torch.Tensor) -> LoraPath:
        """The path for a forward of `rows` × `tokens` over inputs like `x` (see the class docstring)."""
        if self.path != "auto":
            return self.path
        segments = self.segments(rows, tokens, x.device)
        if len(segments) <= 1:
            return "segments"
        if tokens == 1:
            return "bags" if x.device.type == "cpu" and x.dtype == torch.float32 else "gather"
        assert self._slots is not None
        adapted = sum(len(index) for _, index in segments)
        short = adapted < SHORT_SEGMENT * len(segments)
        return "gather" if short and self._slots.dim() == 1 else "segments"

    def groups(
        self, rows: int, tokens: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The gather's groups, tokens sharing one slot: their slots (G,) and a (G, T, 1) mask or None.

        Rows routed whole are a group each (mask: the token mask); rows routed per token give a group per
        token (its padding already sent to the base slot).
        """
        key = (rows, tokens, f"groups:{device}")
        if key not in self._cache:
            assert self._slots is not None
            if self._slots.dim() == 2:
                self._cache[key] = (self.token_slots(rows, tokens, device), None)
            else:
                mask = self._token_mask
                mask = None if mask is None else mask[:, -tokens:, None].to(device)
                self._cache[key] = (self._slots.to(device), mask)
        return self._cache[key]  # type: ignore[return-value]

    def bags(
        self, rows: int, tokens: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`embedding_bag` indices and offsets: token t's bag is rows k(t)·width … k(t)·width + width − 1."""
        key = (rows, tokens, f"bags:{width}:{device}")
        if key not in self._cache:
            flat = self.token_slots(rows, tokens, device)  # (N,)
            indices = (flat[:, None] * width + torch.arange(width, device=device)).reshape(-1)  # (N · width,)
            offsets = torch.arange(0, flat.numel() * width, width, device=device)  # (N,)
            self._cache[key] = (indices, offsets)
        return self._cache[key]  # type: ignore[return-value]


class MultiLoraLinear(nn.Module):
    """A frozen base linear layer plus adapters in slots; each token adds its own slot's s·B·A·x."""

    def __init__(self, base: nn.Module, batch: LoraBatch, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.base_layer = base
        self.batch = batch
        self.in_features, self.out_features = _features(base)
        weight: torch.Tensor = base.weight  # type: ignore[assignment]
        device = weight.device
        chosen: torch.dtype = dtype or getattr(base, "compute_dtype", None) or weight.dtype
        self.dtype = chosen if chosen.is_floating_point else torch.float32  # NF4 weights are packed uint8
        self.ranks: list[int] = [0]  # rank per slot in this layer (0 = empty or not adapted here)
        self.holds_adapters = False
        self.register_buffer("lora_a", torch.zeros(1, self.in_features, 0, dtype=self.dtype, device=device))
        self.register_buffer("lora_b", torch.zeros(1, 0, self.out_features, dtype=self.dtype, device=device))
        self.lora_a: torch.Tensor  # (S, in, R): Aᵀ per slot
        self.lora_b: torch.Tensor  # (S, R, out): (s·B)ᵀ per slot, the scale folded in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # (..., out)
        if not self.batch.active or not self.holds_adapters:
            return y
        rows, tokens = (x.shape[0], x.shape[1]) if x.dim() == 3 else (x.shape[0], 1)
        x_flat = x.reshape(-1, self.in_features).to(self.dtype)  # (N, in)
        y_flat = y.view(-1, self.out_features)  # (N, out), a view: updated in place
        path = self.batch.choose(rows, tokens, x_flat)
        if path == "segments":
            self._add_segments(x_flat, y_flat, rows, tokens)
            return y
        if path == "gather":
            slots, mask = self.batch.groups(rows, tokens, x.device)  # (G,), (G, T, 1) or None
            a = self.lora_a.index_select(0, slots)  # (G, in, R)
            b = self.lora_b.index_select(0, slots)  # (G, R, out)
            h = torch.bmm(x_flat.view(len(slots), -1, self.in_features), a)  # (G, T, R)
            delta = torch.bmm(h if mask is None else h * mask, b).view(-1, self.out_features)  # (N, out)
        else:
            h = self._bags(x_flat, self.lora_a, rows, tokens)  # (N, R)
            delta = self._bags(h, self.lora_b, rows, tokens)  # (N, out)
        y_flat += delta.to(y.dtype)
        return y

    def _add_segments(self, x_flat: torch.Tensor, y_flat: torch.Tensor, rows: int, tokens: int) -> None:
        """Add each segment's X_k · A_kᵀ · (s_k B_k)ᵀ, at its own rank, into its tokens' rows of `y_flat`."""
        for slot, index in self.batch.segments(rows, tokens, x_flat.device):
            rank = self.ranks[slot] if slot < len(self.ranks) else 0
            if rank:
                segment = x_flat.index_select(0, index)  # (n_k, in)
                delta = segment @ self.lora_a[slot, :, :rank] @ self.lora_b[slot, :rank]  # (n_k, out)
                y_flat.index_add_(0, index, delta.to(y_flat.dtype))

    def _bags(self, v: torch.Tensor, stack: torch.Tensor, rows: int, tokens: int) -> torch.Tensor:
        """Each token's row of `v` (N, w) times its own slot's matrix in `stack` (S, w, m): (N, m)."""
        width = stack.shape[1]
        indices, offsets = self.batch.bags(rows, tokens, width, v.device)
        table = stack.view(-1, stack.shape[2])  # (S · w, m)
        return F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=v.reshape(-1))

    @property
    def slot_count(self) -> int:
        return self.lora_a.shape[0]

    def put(self, slot: int, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        """Hold factors A (r × in) and B (out × r) with scale s in `slot`, growing the stacks if needed."""
        rank = a.shape[0]
        if a.shape != (rank, self.in_features) or b.shape != (self.out_features, rank):
            raise BaseModelMismatchError(
                f"factors A {tuple(a.shape)}, B {tuple(b.shape)} do not fit a layer of in features "
                f"{self.in_features} and out features {self.out_features}"
            )
        self._resize(max(self.slot_count, slot + 1), max(self.rank, rank))
        with torch.no_grad():
            self.lora_a[slot].zero_()
            self.lora_b[slot].zero_()
            self.lora_a[slot, :, :rank] = a.T.to(self.lora_a)
            self.lora_b[slot, :rank] = (b.float() * scale).T.to(self.lora_b)
        self.ranks[slot] = rank
        self.holds_adapters = True

    def clear(self, slot: int) -> None:
        """Empty `slot` (zeros), shrinking the padded rank when its adapter was the largest.

        The stacks grow to reach `slot`: a layer an adapter does not adapt still routes its tokens.
        """
        if slot == BASE_SLOT:
            return
        self._resize(max(self.slot_count, slot + 1), self.rank)
        with torch.no_grad():
            self.lora_a[slot].zero_()
            self.lora_b[slot].zero_()
        self.ranks[slot] = 0
        self.holds_adapters = any(self.ranks)
        if max(self.ranks) < self.rank:
            self._resize(self.slot_count, max(self.ranks))

    @property
    def rank(self) -> int:
        """The padded rank R of the slot stacks: the largest rank held."""
        return self.lora_a.shape[2]

    def _resize(self, slots: int, rank: int) -> None:
        old_slots, old_rank = self.slot_count, self.rank
        if (slots, rank) == (old_slots, old_rank):
            return
        a = self.lora_a.new_zeros(slots, self.in_features, rank)  # (S, in, R)
        b = self.lora_b.new_zeros(slots, rank, self.out_features)  # (S, R, out)
        keep_slots, keep_rank = min(slots, old_slots), min(rank, old_rank)
        a[:keep_slots, :, :keep_rank] = self.lora_a[:keep_slots, :, :keep_rank]
        b[:keep_slots, :keep_rank] = self.lora_b[:keep_slots, :keep_rank]
        self.lora_a, self.lora_b = a, b
        self.ranks += [0] * (slots - len(self.ranks))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, slots={self.slot_count}, rank={self.rank}"


def wrap_linears(
    model: nn.Module, targets: Sequence[str] | None = None, *, batch: LoraBatch | None = None
) -> dict[str, MultiLoraLinear]:
    """Replace `model`'s target linear layers by `MultiLoraLinear`s in place; return them by module name.

    `targets` are short names (`q_proj`) or full module names; None wraps every linear layer but the
    output head. All wrapped layers share `batch` (a new `LoraBatch` when None), each as `.batch`.
    """
    batch = batch or LoraBatch()
    wrapped: dict[str, MultiLoraLinear] = {}
    head_of = getattr(model, "get_output_embeddings", None)
    output_head = head_of() if callable(head_of) else None
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if not isinstance(child, nn.Linear | Conv1D) or child is output_head:
                continue
            if targets is not None and child_name not in targets and name not in targets:
                continue
            layer = MultiLoraLinear(child, batch)
            setattr(parent, child_name, layer)
            wrapped[name] = layer
    if not wrapped:
        raise ConfigError(f"no linear layer of {type(model).__name__} matches targets {list(targets or [])}")
    return wrapped


class AdapterWeights(Protocol):
    """What a slot needs of a loaded adapter (`serving.cache.LoadedAdapter` is one)."""

    @property
    def ref(self) -> str: ...
    @property
    def scale(self) -> float: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def factors(self) -> Mapping[str, tuple[torch.Tensor, torch.Tensor]]: ...


class AdapterSlots:
    """The device tier: adapters held in the slots of every wrapped layer, least recently used out first.

    At most `max_slots` adapters (and `max_bytes` of their factors, when set) are held. An adapter is
    pinned while a running request uses it (`acquire`/`release`) and never evicted then; when every slot
    is pinned, `acquire` returns None and the request waits. Not thread-safe: the engine's loop owns it.
    """

    def __init__(
        self, layers: Mapping[str, MultiLoraLinear], *, max_slots: int = 64, max_bytes: int | None = None
    ) -> None:
        if max_slots < 1:
            raise ConfigError(f"max_slots must be at least 1 (got {max_slots})")
        self.layers = dict(layers)
        self.max_slots = max_slots
        self.max_bytes = max_bytes
        self._resident: OrderedDict[str, tuple[int, int]] = OrderedDict()  # ref → (slot, bytes), LRU first
        self._pins: dict[str, int] = {}
        self.loads = self.evictions = self.hits = 0

    def slot_of(self, ref: str) -> int | None:
        held = self._resident.get(ref)
        return held[0] if held else None

    def resident(self) -> list[str]:
        """The refs held, least recently used first."""
        return list(self._resident)

    def acquire(self, ref: str, adapter: AdapterWeights | None = None) -> int | None:
        """Pin `ref` and return its slot, putting `adapter` in one on a miss; None if none can be freed.

        On a miss with `adapter` None, returns None without pinning (the caller loads it and calls again).
        """
        if ref in self._resident:
            self._resident.move_to_end(ref)
            self.hits += 1
        else:
            if adapter is None:
                return None
            slot = self._make_room(adapter.nbytes)
            if slot is None:
                return None
            self._put(slot, ref, adapter)
        self._pins[ref] = self._pins.get(ref, 0) + 1
        return self._resident[ref][0]

    def release(self, ref: str) -> None:
        """Unpin one use of `ref`."""
        count = self._pins.get(ref, 0) - 1
        if count > 0:
            self._pins[ref] = count
        else:
            self._pins.pop(ref, None)

    def evict(self, ref: str) -> bool:
        """Empty `ref`'s slot unless it is pinned; True if it was held and is gone."""
        if ref not in self._resident or self._pins.get(ref):
            return False
        slot, _ = self._resident.pop(ref)
        for layer in self.layers.values():
            layer.clear(slot)
        self.evictions += 1
        return True

    def stats(self) -> dict[str, int]:
        used = sum(size for _, size in self._resident.values())
        return {"slots": len(self._resident), "bytes": used, "pinned": len(self._pins), "loads": self.loads}

    def _make_room(self, nbytes: int) -> int | None:
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise AdapterError(
                f"adapter of {nbytes:,} bytes exceeds the device tier's {self.max_bytes:,} bytes"
            )
        while len(self._resident) >= self.max_slots or (
            self.max_bytes is not None
            and sum(size for _, size in self._resident.values()) + nbytes > self.max_bytes
        ):
            victim = next((ref for ref in self._resident if not self._pins.get(ref)), None)
            if victim is None:
                return None
            self.evict(victim)
        used = {slot for slot, _ in self._resident.values()}
        return next(slot for slot in range(1, self.max_slots + 1) if slot not in used)

    def _put(self, slot: int, ref: str, adapter: AdapterWeights) -> None:
        unknown = [name for name in adapter.factors if name not in self.layers]
        if unknown:
            served = sorted({name.rsplit(".", 1)[-1] for name in self.layers})
            raise AdapterError(
                f"adapter {ref} adapts {unknown[0]}, which this engine does not serve "
                f"(it serves {', '.join(served)}); wrap that layer too"
            )
        try:
            for name, layer in self.layers.items():
                if name in adapter.factors:
                    a, b = adapter.factors[name]
                    layer.put(slot, a, b, adapter.scale)
                else:
                    layer.clear(slot)
        except BaseModelMismatchError as err:
            for layer in self.layers.values():
                layer.clear(slot)
            raise BaseModelMismatchError(f"adapter {ref}: {err}") from err
        self._resident[ref] = (slot, adapter.nbytes)
        self.loads += 1


def merge_into(model: nn.Module, adapter: AdapterWeights) -> None:
    """Add s·B·A of every module `adapter` adapts into `model`'s base weights, in place (merged serving)."""
    with torch.no_grad():
        for name, (a, b) in adapter.factors.items():
            layer = model.get_submodule(name)
            weight: torch.Tensor = layer.weight  # type: ignore[assignment]
            if getattr(weight, "quant_state", None) is not None:
                raise ConfigError(
                    f"merged serving of {adapter.ref!r} needs a fp32 or bf16 base: {name} is stored in NF4"
                )
            delta = adapter.scale * (b.float() @ a.float())  # (out, in)
            if isinstance(layer, Conv1D):  # stored as (in, out)
                delta = delta.T
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))


def _features(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, Conv1D):  # GPT-2 stores its weight as (in, out)
        return layer.weight.shape[0], layer.weight.shape[1]
    return layer.in_features, layer.out_features  # type: ignore[return-value]
