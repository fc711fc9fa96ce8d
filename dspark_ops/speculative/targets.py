"""Target models for :func:`dspark_ops.generate`: the protocol and two adapters (SPEC §8).

The protocol is what a speculative round needs from the model being sped up. Every tensor
is on the target's device; requests are rows ``0..R-1`` of the target's own batch state, in
the order the caller gave them, and token batches are *flattened*: request r's tokens come
back to back after request r-1's, with ``lengths[r]`` of them (the layout of
``verify_chain``'s ``target_logits``).

``prefill(tokens [N], lengths [R], capacity) -> TargetOutput``
    Start a new batch of R requests from their prompts (every ``lengths[r] >= 1``) and keep
    them in the KV cache. ``capacity`` bounds the positions any request will reach (prompt +
    generated tokens + one verify block), for adapters that preallocate. Returns the logits
    of each prompt's *last* position, ``[R, V]``, and the requested hidden states of every
    prompt position, ``[N, H]`` (or None).
``verify(tokens [N], lengths [R], max_len) -> TargetOutput``
    Run the model over ``lengths[r]`` new tokens per request (they follow the request's
    cached tokens; ``lengths[r] = 0`` is allowed) and return the logits of every one,
    ``[N, V]``, plus their hidden states ``[N, H]`` (or None). ``max_len`` is a host-side
    bound on ``max(lengths)`` so that adapters can pad without reading ``lengths``. The new
    tokens are appended *tentatively*: the next call must be ``rollback``.
``rollback(keep [R])``
    Keep the first ``keep[r] <= lengths[r]`` tokens of the last ``verify`` in request r's
    cache and forget the rest (the rejected drafts). ``keep = lengths`` keeps everything.
``retain(index [A])``
    Keep only the requests ``index`` (ascending row numbers), which become rows ``0..A-1``;
    finished requests leave the batch this way.

``vocab_size`` (int) and ``device`` are attributes. ``H`` is the width of the hidden
states the adapter was asked for: the selected layers' outputs concatenated (DFlash/DSpark
drafters build their context from ``[H_l1 ; ... ; H_lm]``).

Adapters: :class:`TinyCausalLM` (a small pure-PyTorch transformer with a preallocated KV
cache, for tests and demos) and :class:`HFCausalLM` (any Hugging Face causal LM; needs the
optional ``transformers`` dependency). Both also offer ``truncate(lengths [R])`` (keep the
first ``lengths[r]`` positions), which lets them serve as draft models
(:class:`~dspark_ops.speculative.proposers.ModelDrafter`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .target_layers import hidden_state_indices


@dataclasses.dataclass
class TargetOutput:
    """What ``prefill`` and ``verify`` return: logits (``[R, V]`` after prefill, ``[N, V]``
    after verify) and the selected hidden states ``[N, H]`` of every input token (or None)."""

    logits: torch.Tensor
    hidden: Optional[torch.Tensor] = None


class Target(Protocol):
    """The target-model protocol of :func:`dspark_ops.generate` (see the module docstring)."""

    vocab_size: int
    device: torch.device

    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, capacity: int) -> TargetOutput: ...

    def verify(self, tokens: torch.Tensor, lengths: torch.Tensor, max_len: int) -> TargetOutput: ...

    def rollback(self, keep: torch.Tensor) -> None: ...

    def retain(self, index: torch.Tensor) -> None: ...


# ---------------------------------------------------------------------------------------
# Ragged (flattened variable-length) batches.


def ragged_index(lengths: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a flattened batch of ``total = Σ lengths`` tokens: the request ``row[n]`` and the
    position within the request ``col[n]`` of every token n. No host sync (``total`` is
    given), so it can run inside a captured round."""
    rows = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths, output_size=total)
    starts = torch.cumsum(lengths, 0) - lengths
    cols = torch.arange(total, device=lengths.device) - starts[rows]
    return rows, cols


def pad_ragged(tokens: torch.Tensor, lengths: torch.Tensor, width: int, fill: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened tokens ``[N]`` -> padded ``[R, width]`` (``fill`` in the gaps), and the
    ``(rows, cols)`` of every flattened token to gather per-token outputs back."""
    rows, cols = ragged_index(lengths, tokens.shape[0])
    padded = torch.full((lengths.shape[0], width), fill, dtype=tokens.dtype, device=tokens.device)
    padded[rows, cols] = tokens
    return padded, rows, cols


# ---------------------------------------------------------------------------------------
# The built-in tiny target.


@dataclasses.dataclass
class TinyConfig:
    """Shape of :class:`TinyCausalLM`. ``logit_scale`` widens the output distribution so that
    a randomly initialised model is far from uniform (greedy ties are then negligible)."""

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    rope_theta: float = 10000.0
    logit_scale: float = 4.0
    target_layer_ids: tuple[int, ...] = ()


class _RMSNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class _Block(nn.Module):
    def __init__(self, c: TinyConfig):
        super().__init__()
        self.n_heads, self.head_dim = c.n_heads, c.d_model // c.n_heads
        self.attn_norm, self.mlp_norm = _RMSNorm(c.d_model), _RMSNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model, bias=False)
        self.o = nn.Linear(c.d_model, c.d_model, bias=False)
        self.gate_up = nn.Linear(c.d_model, 2 * c.d_ff, bias=False)
        self.down = nn.Linear(c.d_ff, c.d_model, bias=False)


def _rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of ``x [B, L, H, Dh]`` at positions ``pos [B, L]`` (half-split)."""
    half = x.shape[-1] // 2
    freq = theta ** (-torch.arange(half, device=x.device, dtype=x.dtype) / half)
    ang = pos.to(x.dtype)[..., None, None] * freq  # [B, L, 1, half]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class TinyCausalLM(nn.Module):
    """A small causal transformer (RMSNorm, RoPE attention, SwiGLU) implementing the
    :class:`Target` protocol with a preallocated per-request KV cache.

    The cache of each layer is ``[R, capacity, heads, head_dim]`` with ``cache_lens [R]``
    valid entries. ``verify`` writes the new keys/values right after the valid entries and
    attends causally; ``rollback(keep)`` only moves ``cache_lens`` (entries past it are
    never read), so dropping rejected drafts costs nothing and needs no host sync.

    ``forward(ids [B, L])`` is the plain no-cache forward (logits ``[B, L, V]``), the
    reference that the cached path must agree with. ``target_layer_ids`` selects the hidden
    states returned by ``prefill``/``verify`` with DeepSpec's meaning
    (:mod:`~dspark_ops.speculative.target_layers`): -1 is the embedding output, i the output
    of block i (0-based); the last block is refused.
    """

    def __init__(self, config: TinyConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        assert config.d_model % config.n_heads == 0 and (config.d_model // config.n_heads) % 2 == 0
        self.config = config
        self._hidden_index = hidden_state_indices(config.target_layer_ids, config.n_layers) if config.target_layer_ids else []
        self.vocab_size = config.vocab_size
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.norm = _RMSNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    continue
                fan_in = p.shape[-1] if p.dim() > 1 and "embed" not in name else 1
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            self.lm_head.weight.mul_(config.logit_scale)
        self.to(device=device, dtype=dtype)
        self.requires_grad_(False)
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self.cache_lens = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._bound = 0  # host-side upper bound on cache_lens (limits the keys attended to)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def perturbed(self, noise: float, seed: int = 1) -> "TinyCausalLM":
        """A copy with Gaussian noise of std ``noise`` added to every weight: a stand-in
        draft model that agrees with this one often but not always."""
        model = TinyCausalLM(self.config, dtype=self.dtype, device=self.device)
        model.load_state_dict(self.state_dict())
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
        return model

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    # -- the transformer ----------------------------------------------------------------
    def _run(self, ids: torch.Tensor, pos: torch.Tensor, cache: bool):
        """ids, pos ``[B, L]`` -> (final hidden ``[B, L, d]``, selected hidden list).
        With ``cache``, keys/values go into the cache at ``pos`` and attention reads the
        cache; without, attention is plain causal attention over ``ids``."""
        c = self.config
        B, L = ids.shape
        x = self.embed(ids.clamp(0, c.vocab_size - 1))
        states = [x]  # hidden_states in Hugging Face's order: embeddings, then each block
        if cache:
            width = min(self._bound, self._k[0].shape[1]) if self._k else 0
            key_pos = torch.arange(width, device=ids.device)
            mask = (key_pos[None, None, :] <= pos[:, :, None])[:, None]  # [B, 1, L, width]
            rows = torch.arange(B, device=ids.device)[:, None].expand(B, L)
            write = pos.clamp_max(self._k[0].shape[1] - 1)
        for i, blk in enumerate(self.blocks):
            h = blk.attn_norm(x)
            q, k, v = blk.qkv(h).view(B, L, 3, blk.n_heads, blk.head_dim).unbind(2)
            q, k = _rope(q, pos, c.rope_theta), _rope(k, pos, c.rope_theta)
            if cache:
                self._k[i][rows, write] = k
                self._v[i][rows, write] = v
                k, v = self._k[i][:, :width], self._v[i][:, :width]
                a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
            else:
                a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            x = x + blk.o(a.transpose(1, 2).reshape(B, L, -1))
            g, u = blk.gate_up(blk.mlp_norm(x)).chunk(2, -1)
            x = x + blk.down(F.silu(g) * u)
            states.append(x)
        return self.norm(x), [states[j] for j in self._hidden_index]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """No-cache causal forward: ``ids [B, L]`` -> logits ``[B, L, V]``."""
        pos = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        x, _ = self._run(ids, pos, cache=False)
        return self.lm_head(x)

    # -- the Target protocol ---------------------------------------------------------------
    def _cached(self, tokens, lengths, width):
        padded, rows, cols = pad_ragged(tokens, lengths, width)
        x, layers = self._step(padded)
        hidden = torch.cat([h[rows, cols] for h in layers], -1) if layers else None
        return x, rows, cols, hidden

    def _step(self, padded: torch.Tensor):
        pos = self.cache_lens[:, None] + torch.arange(padded.shape[1], device=padded.device)
        self._bound += padded.shape[1]
        return self._run(padded, pos, cache=True)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Padded variant of ``verify``: ``tokens [R, W]`` after each request's cache ->
        logits ``[R, W, V]``; like ``verify``, follow it with ``rollback(keep)``."""
        x, _ = self._step(tokens)
        return self.lm_head(x)

    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, capacity: int) -> TargetOutput:
        """Host sync: reads ``max(lengths)`` once, to pad the prompts."""
        R = lengths.shape[0]
        width = int(lengths.max()) if R else 0
        cap = max(capacity, width) + 1  # one spare slot absorbs the writes of padded inputs
        d = self.config.d_model
        shape = (R, cap, self.config.n_heads, d // self.config.n_heads)
        self._k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.blocks]
        self._v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.blocks]
        self.cache_lens = torch.zeros(R, dtype=torch.int64, device=self.device)
        self._bound = 0
        x, rows, cols, hidden = self._cached(tokens, lengths, width)
        self.cache_lens = lengths.clone()
        last = x[torch.arange(R, device=x.device), (lengths - 1).clamp_min(0)]
        return TargetOutput(self.lm_head(last), hidden)

    def verify(self, tokens: torch.Tensor, lengths: torch.Tensor, max_len: int) -> TargetOutput:
        x, rows, cols, hidden = self._cached(tokens, lengths, max_len)
        self._pending = lengths
        return TargetOutput(self.lm_head(x[rows, cols]), hidden)

    def rollback(self, keep: torch.Tensor) -> None:
        self.cache_lens = self.cache_lens + keep
        self._pending = None

    def truncate(self, lengths: torch.Tensor) -> None:
        """Keep only the first ``lengths[r]`` positions of request r (``<=`` what it holds)."""
        self.cache_lens = torch.minimum(self.cache_lens, lengths)

    def retain(self, index: torch.Tensor) -> None:
        self._k = [k[index] for k in self._k]
        self._v = [v[index] for v in self._v]
        self.cache_lens = self.cache_lens[index]


# ---------------------------------------------------------------------------------------
# Hugging Face adapter.


class HFCausalLM:
    """:class:`Target` adapter for a Hugging Face causal LM (``transformers`` is optional
    and only needed here). Also usable as a draft model: see
    :class:`~dspark_ops.speculative.proposers.ModelDrafter`.

    The batch shares one ``DynamicCache``. ``_slot_pos [R, S]`` records the position held by
    each cache slot of each request (-1: a hole). Prompts are right-padded (the padding
    slots are holes); each ``verify`` appends ``max_len`` slots per request with explicit
    ``position_ids`` (the request's true positions) and a 2-D attention mask that hides the
    holes; ``rollback(keep)`` turns the rejected drafts' slots into holes and then compacts
    the cache: every request's live slots are moved to the front (one gather per layer, in
    order) and the cache is cut to the longest request, so memory stays bounded by the
    tokens kept (plus the padding of shorter requests). Compacting reads the longest
    request's length on the host (one sync per round; a reference loop, not an engine).

    ``target_layer_ids`` selects the hidden states returned, with DeepSpec's meaning
    (:mod:`~dspark_ops.speculative.target_layers`): -1 = embeddings, i = output of decoder
    layer i; the final layer is refused. The cache is passed by the keyword the model's
    ``forward`` declares (``cache`` in recent ``transformers``, ``past_key_values`` before),
    so no deprecated argument is used. Caches whose layers drop old slots (sliding-window
    layers) cannot be compacted this way and are refused at prefill with a clear error.
    """

    def __init__(self, model, target_layer_ids: Sequence[int] = ()):
        import inspect

        from transformers import DynamicCache  # noqa: F401  (fail early without transformers)

        self.model = model.eval()
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.target_layer_ids = tuple(target_layer_ids)
        self._hidden_index = hidden_state_indices(target_layer_ids, config.num_hidden_layers) if target_layer_ids else []
        self.vocab_size = config.vocab_size
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keeps_logits = "logits_to_keep" in params
        self._cache = None
        self._slot_pos = None  # [R, S] int64, position in each cache slot or -1
        self._next_pos = None  # [R] int64, the next position of each request (= tokens kept)
        self._pending = None  # [R, max_len] positions written by the last verify

    def _forward(self, ids, new_pos, new_valid, **extra):
        mask = torch.cat([self._slot_pos >= 0, new_valid], 1).long()
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=new_pos,
            use_cache=True,
            output_hidden_states=bool(self._hidden_index),
            **{self._cache_kw: self._cache},
            **extra,
        )
        self._slot_pos = torch.cat([self._slot_pos, torch.where(new_valid, new_pos, -1)], 1)
        return out

    def _hidden(self, out, rows, cols):
        if not self._hidden_index:
            return None
        return torch.cat([out.hidden_states[i][rows, cols] for i in self._hidden_index], -1)

    def _new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # transformers < 4.56
            return DynamicCache()

    def _check_cache_layers(self) -> None:
        for layer in getattr(self._cache, "layers", ()):
            if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
                raise NotImplementedError(
                    f"HFCausalLM: the model's cache uses {type(layer).__name__} layers, which drop or transform "
                    "old slots; rollback needs full-attention DynamicCache layers (keys/values [R, H, S, D])"
                )

    def _compact(self) -> None:
        """Move every request's live slots to the front (in order) and cut the cache to the
        longest request. One host sync (the new length)."""
        live = self._slot_pos >= 0
        S = live.shape[1]
        slots = torch.arange(S, device=live.device)
        order = torch.argsort(torch.where(live, slots, slots + S), dim=1)
        width = int(live.sum(1).max()) if live.numel() else 0
        if width == S:
            return
        order = order[:, :width]
        self._slot_pos = self._slot_pos.gather(1, order)
        for layer in getattr(self._cache, "layers", ()):
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            idx = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, idx)
            layer.values = layer.values.gather(2, idx.expand(-1, layer.values.shape[1], -1, layer.values.shape[3]))

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, capacity: int) -> TargetOutput:
        """Host sync: reads ``max(lengths)`` once, to pad the prompts."""
        R = lengths.shape[0]
        width = int(lengths.max()) if R else 0
        ids, rows, cols = pad_ragged(tokens, lengths, width)
        steps = torch.arange(width, device=tokens.device)
        self._cache = self._new_cache()
        self._slot_pos = torch.zeros(R, 0, dtype=torch.int64, device=tokens.device)
        # Only the last prompt position of each request needs logits ([R, L, V] can be GBs):
        # ask for the distinct last positions through `logits_to_keep` where supported.
        last_pos = (lengths - 1).clamp_min(0)
        extra, pick = {}, last_pos
        if self._keeps_logits:
            keep_pos, pick = torch.unique(last_pos, return_inverse=True)
            extra["logits_to_keep"] = keep_pos
        out = self._forward(ids, steps.expand(R, -1), steps[None] < lengths[:, None], **extra)
        self._check_cache_layers()
        self._next_pos = lengths.clone()
        last = out.logits[torch.arange(R, device=ids.device), pick]
        return TargetOutput(last, self._hidden(out, rows, cols))

    @torch.no_grad()
    def verify(self, tokens: torch.Tensor, lengths: torch.Tensor, max_len: int) -> TargetOutput:
        ids, rows, cols = pad_ragged(tokens, lengths, max_len)
        steps = torch.arange(max_len, device=tokens.device)
        pos = self._next_pos[:, None] + steps
        out = self._forward(ids, pos, steps[None] < lengths[:, None])
        self._pending = max_len
        return TargetOutput(out.logits[rows, cols], self._hidden(out, rows, cols))

    def rollback(self, keep: torch.Tensor) -> None:
        n = self._pending
        tail = self._slot_pos[:, -n:] if n else self._slot_pos[:, :0]
        steps = torch.arange(tail.shape[1], device=keep.device)
        self._slot_pos[:, self._slot_pos.shape[1] - tail.shape[1] :] = torch.where(steps[None] < keep[:, None], tail, -1)
        self._next_pos = self._next_pos + keep
        self._pending = None
        self._compact()

    def truncate(self, lengths: torch.Tensor) -> None:
        """Keep only the first ``lengths[r]`` positions of request r (``<=`` what it holds)."""
        self._slot_pos = torch.where(self._slot_pos < lengths[:, None], self._slot_pos, -1)
        self._next_pos = torch.minimum(self._next_pos, lengths)
        self._compact()

    @property
    def cache_slots(self) -> int:
        """Slots per request in the cache now (memory use; for tests and monitoring)."""
        return 0 if self._slot_pos is None else self._slot_pos.shape[1]

    def retain(self, index: torch.Tensor) -> None:
        self._cache.batch_select_indices(index)
        self._slot_pos = self._slot_pos[index]
        self._next_pos = self._next_pos[index]
