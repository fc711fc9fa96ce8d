"""``DSparkDrafter``: DeepSpec's DSpark / DFlash drafters (SPEC §7) built on the block-draft ops.

Two families, chosen by the checkpoint's ``architectures`` (anything else is refused up
front): DeepSpec's ``Qwen3DSparkModel`` and ``Gemma4DSparkModel`` (the DFlash design with
DSpark's Markov and confidence heads; DFlash checkpoints are the same with neither head),
rewritten for inference:

* context: ``H_ctx = hidden_norm(fc([H_l1 ; ... ; H_lm]))`` from the target's selected layers
  (``target_layer_ids``, DeepSpec's meaning: :mod:`~dspark_ops.speculative.target_layers`);
  every layer turns it into keys ``k_norm(k_proj(H_ctx))`` with RoPE at the tokens' true
  positions and values ``v_proj(H_ctx)``, appended once per committed token to a per-layer
  cache (:func:`dspark_ops.append_context_kv`). No input layernorm is applied to the
  context: that is DeepSpec's layout.
* block: the anchor ``x0`` at position ``p = cache.lens[r]`` followed by mask tokens at
  ``p+1 ..``; each Qwen3 decoder layer is ``x += o_proj(attn(rms_norm(x)))``,
  ``x += down(silu(gate(y)) * up(y))`` with ``y = rms_norm(x)``; the attention
  (:func:`dspark_ops.block_attention`) sees the request's cached context and every block token
  (non-causal inside the block). A final norm and the shared ``lm_head`` give the base logits
  ``U[R, γ, V]``.
* Gemma 4 differs in: embeddings scaled by ``sqrt(hidden)``; attention with a weightless
  ``v_norm`` on the values, scale 1.0 and, with ``attention_k_eq_v``, no ``v_proj`` (V is the
  raw K projection); four sandwich norms per layer and a saved ``layer_scalar`` multiplying
  each layer's output; a tanh-GeLU MLP, twice as wide on the layers DeepSpec's config makes
  so; proportional / partial RoPE; ``final_logit_softcapping`` on ``U`` before the Markov bias.
* RoPE scaling from the config (:mod:`~dspark_ops.speculative.rope_scaling`) goes to the ops
  as an ``inv_freq`` table and an ``attention_scaling``.
* head: :func:`torch.ops.dspark.markov_draft` (SPEC §3) adds the Markov / gated / RNN bias
  sequentially, samples the draft tokens and evaluates the confidence head.

Parameter names are DeepSpec's, so ``state_dict()`` keys are those of a DeepSpec checkpoint:
``fc.weight``, ``hidden_norm.weight``, ``layers.{i}.self_attn.{q,k,v,o}_proj.weight``,
``layers.{i}.self_attn.{q,k}_norm.weight``, ``layers.{i}.mlp.{gate,up,down}_proj.weight``,
``layers.{i}.{input,post_attention}_layernorm.weight``, ``norm.weight``, (Gemma 4:
``layers.{i}.{pre,post}_feedforward_layernorm.weight``, ``layers.{i}.layer_scalar``, no
``v_proj`` with ``attention_k_eq_v``),
``embed_tokens.weight``, ``lm_head.weight``, ``markov_head.markov_w1.weight``,
``markov_head.markov_w2.weight``, ``markov_head.gate_proj.{weight,bias}`` (gated),
``markov_head.joint_proj.{weight,bias}`` (rnn), ``confidence_head.proj.{weight,bias}``.

Block layout: ``verification_block_size`` tokens (anchor + masks) go through the backbone and
the ``block_size`` hidden states from ``proposal_hidden_offset`` on are the proposals, as in
DeepSpec's training forward (its eval code slices from 0; both agree for the usual offset 0).
``from_pretrained`` casts every tensor to one dtype (SPEC §2: one dtype per call).

Typical round (all on the device, no host sync)::

    drafter = DSparkDrafter.from_pretrained(path, embed_tokens=target.embed_tokens,
                                            lm_head=target.lm_head, dtype=torch.bfloat16,
                                            device="cuda")
    cache = drafter.new_cache(requests=R, max_len=4096)
    # after prefill / each verify: hidden states of the newly committed tokens
    drafter.append_context(cache, target_hidden, num_new)   # [R, C, m*d], [R]
    out = drafter.draft(anchor, cache, temperature, seed, offset)
    out.tokens, out.draft_logits, out.token_logprob, out.confidence
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.block_draft import append_context_kv, block_attention, qk_norm_rope, rms_norm
from .rope_scaling import RopeSpec, rope_from_config
from .target_layers import validate_target_layer_ids

__all__ = ["DSparkConfig", "DSparkDrafter", "DrafterCache", "DraftOutput"]


QWEN3 = "Qwen3DSparkModel"
GEMMA4 = "Gemma4DSparkModel"
SUPPORTED_ARCHITECTURES = (QWEN3, GEMMA4)
_ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclass
class DSparkConfig:
    """The config fields of a DeepSpec DSpark checkpoint that the drafter uses.

    ``from_dict`` reads DeepSpec's ``config.json`` (the target's text config plus the DSpark
    fields) for both families DeepSpec ships, chosen by ``architectures[0]``:
    ``Qwen3DSparkModel`` (the default when absent) and ``Gemma4DSparkModel``. DFlash
    checkpoints are the same architectures with ``markov_rank = 0`` and no confidence head.
    For Gemma 4 the fields are normalised on reading: ``head_dim`` is ``global_head_dim``,
    ``num_key_value_heads`` is ``num_global_key_value_heads`` when ``attention_k_eq_v``,
    ``hidden_act`` is ``hidden_activation``, and RoPE comes from
    ``rope_parameters["full_attention"]`` (stray top-level ``rope_theta: null`` ignored).
    Unknown fields are ignored, missing required ones raise, and so does any architecture,
    RoPE type or activation the drafter does not implement.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    target_layer_ids: list[int]
    mask_token_id: int
    block_size: int
    markov_rank: int = 0
    markov_head_type: Optional[str] = None
    enable_confidence_head: bool = False
    confidence_head_with_markov: bool = False
    verification_block_size: Optional[int] = None
    proposal_hidden_offset: int = 0
    attention_bias: bool = False
    hidden_act: str = "silu"
    pad_token_id: Optional[int] = None
    architecture: str = QWEN3
    # Gemma 4: k = v attention (no v_proj), the logit soft cap, the layers whose MLP is
    # twice as wide (DeepSpec copies num_kv_shared_layers from the target).
    attention_k_eq_v: bool = False
    final_logit_softcapping: Optional[float] = None
    double_wide_layers: tuple[int, ...] = ()
    rope: RopeSpec = field(default=None, repr=False)  # set by from_dict / __post_init__
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    REQUIRED = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "target_layer_ids",
        "mask_token_id",
        "block_size",
    )

    def __post_init__(self):
        if self.rope is None:
            self.rope = RopeSpec(float(self.rope_theta))

    @property
    def is_gemma4(self) -> bool:
        return self.architecture == GEMMA4

    @property
    def attention_scale(self) -> float:
        """Softmax scale: ``Dh ** -0.5`` (Qwen3), 1.0 (Gemma 4: q_norm / k_norm set the scale)."""
        return 1.0 if self.is_gemma4 else self.head_dim**-0.5

    @property
    def embed_scale(self) -> float:
        """Gemma 4 scales token embeddings by ``sqrt(hidden_size)``."""
        return float(self.hidden_size) ** 0.5 if self.is_gemma4 else 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DSparkConfig":
        arch = (d.get("architectures") or [QWEN3])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"DSpark config: architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)} "
                "(DFlash checkpoints use the same architectures with markov_rank 0)"
            )
        d = _gemma4_fields(d) if arch == GEMMA4 else dict(d)
        missing = [k for k in cls.REQUIRED if k not in d]
        if int(d.get("markov_rank", 0) or 0) > 0 and "markov_head_type" not in d:
            missing.append("markov_head_type (required when markov_rank > 0)")
        if missing:
            raise ValueError(f"DSpark config: missing required fields: {', '.join(missing)}")
        act = d.get("hidden_act", "silu")
        if act not in _ACTIVATIONS:
            raise ValueError(f"DSpark config: hidden_act {act!r} is not supported ({', '.join(_ACTIVATIONS)})")
        if d.get("head_dim") is None:
            d["head_dim"] = int(d["hidden_size"]) // int(d["num_attention_heads"])
        try:
            rope = rope_from_config(d, int(d["head_dim"]), default_dim=d.pop("_default_rope_dim", None))
        except ValueError as e:
            raise ValueError(f"DSpark config: {e}") from None
        names = {f.name for f in fields(cls)} - {"extra", "rope", "rope_theta", "architecture"}
        kwargs = {k: d[k] for k in names if k in d}
        cfg = cls(**kwargs, rope_theta=rope.theta, rope=rope, architecture=arch,
                  extra={k: v for k, v in d.items() if k not in names})
        num_target = d.get("num_target_layers")
        try:
            cfg.target_layer_ids = validate_target_layer_ids(cfg.target_layer_ids, num_target)
        except ValueError as e:
            raise ValueError(f"DSpark config: {e}") from None
        cfg.markov_rank = int(cfg.markov_rank or 0)
        cfg.enable_confidence_head = bool(cfg.enable_confidence_head)
        cfg.confidence_head_with_markov = bool(cfg.confidence_head_with_markov) and cfg.enable_confidence_head
        if cfg.verification_block_size is None:
            cfg.verification_block_size = cfg.block_size
        cfg.verification_block_size = int(cfg.verification_block_size)
        if cfg.proposal_hidden_offset < 0 or cfg.proposal_hidden_offset + cfg.block_size > cfg.verification_block_size:
            raise ValueError(
                "DSpark config: proposal_hidden_offset + block_size must fit in verification_block_size, got "
                f"{cfg.proposal_hidden_offset} + {cfg.block_size} > {cfg.verification_block_size}"
            )
        if cfg.markov_rank > 0 and str(cfg.markov_head_type).lower() not in ("vanilla", "gated", "rnn"):
            raise ValueError(f"DSpark config: unsupported markov_head_type {cfg.markov_head_type!r}")
        if cfg.confidence_head_with_markov and cfg.markov_rank == 0:
            raise ValueError("DSpark config: confidence_head_with_markov needs markov_rank > 0")
        if cfg.num_attention_heads % cfg.num_key_value_heads != 0:
            raise ValueError("DSpark config: num_attention_heads must be a multiple of num_key_value_heads")
        if cfg.final_logit_softcapping is not None and not cfg.final_logit_softcapping > 0:
            raise ValueError("DSpark config: final_logit_softcapping must be positive when set")
        return cfg


def _gemma4_fields(d: dict[str, Any]) -> dict[str, Any]:
    """A Gemma 4 DSpark config (a ``gemma4_text`` config) in the drafter's field names."""
    d = dict(d)
    for key in ("global_head_dim", "rope_parameters"):
        if d.get(key) is None:
            raise ValueError(f"DSpark config: missing required fields: {key} (Gemma4DSparkModel)")
    if d.get("enable_moe_block"):
        raise ValueError("DSpark config: Gemma4DSparkModel with enable_moe_block is not supported (DeepSpec neither)")
    if d.get("hidden_size_per_layer_input"):
        raise ValueError("DSpark config: Gemma4DSparkModel with per-layer input gates is not supported (DeepSpec neither)")
    # DeepSpec's default-RoPE path sizes the frequencies by head_dim, not global_head_dim.
    d["_default_rope_dim"] = d.get("head_dim")
    d["head_dim"] = int(d["global_head_dim"])
    d["attention_k_eq_v"] = bool(d.get("attention_k_eq_v", False))
    if d["attention_k_eq_v"]:
        d["num_key_value_heads"] = d.get("num_global_key_value_heads")
    d["hidden_act"] = d.get("hidden_activation", d.get("hidden_act"))
    for key in ("rope_theta", "rope_type", "rope_scaling"):  # stray top-level RoPE fields; rope_parameters rules
        d.pop(key, None)
    n, shared = int(d["num_hidden_layers"]), int(d.get("num_kv_shared_layers") or 0)
    first_shared = n - shared
    if d.get("use_double_wide_mlp"):
        d["double_wide_layers"] = tuple(i for i in range(n) if i >= first_shared > 0)
    return d


class RMSNorm(nn.Module):
    """Qwen3RMSNorm through :func:`dspark_ops.rms_norm` (parameter: ``weight``). Gemma 4's
    RMSNorm multiplies by ``weight`` too (not ``1 + weight``); it rounds once after the
    product where Qwen3 rounds the normalised value first: the same in float32, up to one
    rounding apart in bf16/fp16."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class RopeTable:
    """The drafter's RoPE arguments for the ops, with the ``inv_freq`` table kept per device."""

    def __init__(self, spec: RopeSpec):
        self.spec = spec
        self._tables: dict[torch.device, torch.Tensor] = {}

    def args(self, device: torch.device) -> tuple[float, Optional[torch.Tensor], float]:
        """``(rope_theta, inv_freq [Dh/2] or None, attention_scaling)``."""
        table = self.spec.inv_freq
        if table is not None:
            if device not in self._tables:
                self._tables[device] = table.to(device=device, dtype=torch.float32)
            table = self._tables[device]
        return self.spec.theta, table, self.spec.attention_scaling


class DSparkAttention(nn.Module):
    """DeepSpec's drafter attention on the ops. Qwen3: q/k_norm, RoPE, scale ``Dh ** -0.5``.
    Gemma 4 adds a weightless ``v_norm`` on the values, scale 1.0, and with
    ``attention_k_eq_v`` has no ``v_proj``: V is ``v_norm`` of the raw K projection."""

    # The attention kernel; benchmarks swap in an SDPA-with-mask equivalent for comparison.
    attention_fn = staticmethod(block_attention)

    def __init__(self, cfg: DSparkConfig, rope: RopeTable):
        super().__init__()
        self.cfg = cfg
        self.rope = rope
        hq, hkv, dh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.q_proj = nn.Linear(d, hq * dh, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, hkv * dh, bias=cfg.attention_bias)
        self.v_proj = None if cfg.attention_k_eq_v else nn.Linear(d, hkv * dh, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(hq * dh, d, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(dh, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(dh, cfg.rms_norm_eps)

    def _kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [R, L, d]`` -> raw keys and final values ``[R, L, Hkv, Dh]``."""
        R, L, _ = x.shape
        shape = (R, L, self.cfg.num_key_value_heads, self.cfg.head_dim)
        k = self.k_proj(x).view(shape)
        v = k if self.v_proj is None else self.v_proj(x).view(shape)
        if self.cfg.is_gemma4:  # v_norm: RMS norm without a weight
            v = rms_norm(v, torch.ones_like(self.k_norm.weight), self.cfg.rms_norm_eps)
        return k, v

    def append_context(self, k_cache, v_cache, ctx, start, num_new) -> None:
        """``ctx [R, C, d]`` (already hidden_norm(fc(...))): k_norm + RoPE keys and values
        written into this layer's cache at ``start[r] ..`` (``append_context_kv``)."""
        k, v = self._kv(ctx)
        theta, inv_freq, scaling = self.rope.args(ctx.device)
        append_context_kv(k_cache, v_cache, k, v, self.k_norm.weight, start, num_new, self.cfg.rms_norm_eps, theta,
                          inv_freq, scaling)

    def forward(self, x, positions, k_cache, v_cache, cache_lens):
        cfg = self.cfg
        R, L, _ = x.shape
        q = self.q_proj(x).view(R, L, cfg.num_attention_heads, cfg.head_dim)
        k, v = self._kv(x)
        theta, inv_freq, scaling = self.rope.args(x.device)
        q, k = qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, positions, cfg.rms_norm_eps, theta,
                            inv_freq, scaling)
        o = self.attention_fn(q, k_cache, v_cache, cache_lens, k, v, cfg.attention_scale)
        return self.o_proj(o.reshape(R, L, cfg.num_attention_heads * cfg.head_dim))


class DSparkMLP(nn.Module):
    """``down(act(gate(x)) * up(x))``: SiLU (Qwen3) or tanh-GeLU (Gemma 4), ``width`` wide."""

    def __init__(self, cfg: DSparkConfig, width: int):
        super().__init__()
        self.act = _ACTIVATIONS[cfg.hidden_act]
        self.gate_proj = nn.Linear(cfg.hidden_size, width, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DSparkDecoderLayer(nn.Module):
    """Qwen3: pre-norm attention and MLP residual blocks."""

    def __init__(self, cfg: DSparkConfig, rope: RopeTable, index: int):
        super().__init__()
        self.self_attn = DSparkAttention(cfg, rope)
        self.mlp = DSparkMLP(cfg, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, positions, k_cache, v_cache, cache_lens):
        x = x + self.self_attn(self.input_layernorm(x), positions, k_cache, v_cache, cache_lens)
        return x + self.mlp(self.post_attention_layernorm(x))


class Gemma4DecoderLayer(nn.Module):
    """Gemma 4: four sandwich norms, a per-layer scalar (a saved buffer, ``layer_scalar``)
    multiplying the output, and a double-width MLP on ``cfg.double_wide_layers``."""

    def __init__(self, cfg: DSparkConfig, rope: RopeTable, index: int):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = DSparkAttention(cfg, rope)
        self.mlp = DSparkMLP(cfg, cfg.intermediate_size * (2 if index in cfg.double_wide_layers else 1))
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.pre_feedforward_layernorm = RMSNorm(d, eps)
        self.post_feedforward_layernorm = RMSNorm(d, eps)
        self.register_buffer("layer_scalar", torch.ones(1))

    def forward(self, x, positions, k_cache, v_cache, cache_lens):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), positions, k_cache, v_cache, cache_lens))
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x * self.layer_scalar


class MarkovHead(nn.Module):
    """DeepSpec's VanillaMarkov / GatedMarkovHead / RNNHead parameters (applied by markov_draft)."""

    def __init__(self, cfg: DSparkConfig):
        super().__init__()
        r, V, d = cfg.markov_rank, cfg.vocab_size, cfg.hidden_size
        self.markov_head_type = str(cfg.markov_head_type).lower()
        self.markov_w1 = nn.Embedding(V, r)
        self.markov_w2 = nn.Linear(r, V, bias=False)
        if self.markov_head_type == "gated":
            self.gate_proj = nn.Linear(d + r, r)
        elif self.markov_head_type == "rnn":
            self.joint_proj = nn.Linear(2 * r + d, 3 * r)


class ConfidenceHead(nn.Module):
    """DeepSpec's AcceptRatePredictor: ``proj = Linear(d [+ r], 1)``."""

    def __init__(self, in_features: int):
        super().__init__()
        self.proj = nn.Linear(in_features, 1)


@dataclass
class DrafterCache:
    """Per-layer context cache: ``k[i], v[i]`` ``[R, Lmax, Hkv, Dh]`` (slot = position) and
    ``lens [R]`` int64, the committed tokens whose target hidden states are cached. The next
    anchor of request r sits at position ``lens[r]``."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    lens: torch.Tensor


@dataclass
class DraftOutput:
    tokens: torch.Tensor  # [R, γ] int64
    draft_logits: torch.Tensor  # [R, γ, V]
    token_logprob: torch.Tensor  # [R, γ] float32
    confidence: torch.Tensor  # [R, γ] float32
    hidden: torch.Tensor  # [R, γ, d] backbone hidden states h_k
    base_logits: torch.Tensor  # [R, γ, V] U_k
    draft_ids: Optional[torch.Tensor] = None  # [R, γ, K] when pruned; draft_logits is then [R, γ, K]


class DSparkDrafter(nn.Module):
    """DeepSpec's DSpark drafter (Qwen3 or Gemma 4 family); see the module docstring."""

    def __init__(self, config: Union[DSparkConfig, dict]):
        super().__init__()
        cfg = config if isinstance(config, DSparkConfig) else DSparkConfig.from_dict(config)
        self.config = cfg
        d = cfg.hidden_size
        self.rope = RopeTable(cfg.rope)
        layer = Gemma4DecoderLayer if cfg.is_gemma4 else DSparkDecoderLayer
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d)
        self.fc = nn.Linear(len(cfg.target_layer_ids) * d, d, bias=False)
        self.hidden_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.layers = nn.ModuleList([layer(cfg, self.rope, i) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(d, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.markov_head = MarkovHead(cfg) if cfg.markov_rank > 0 else None
        self.confidence_head = None
        if cfg.enable_confidence_head:
            self.confidence_head = ConfidenceHead(d + (cfg.markov_rank if cfg.confidence_head_with_markov else 0))

    # ----------------------------------------------------------------------------- cache

    @property
    def gamma(self) -> int:
        """Draft tokens per round (``block_size``)."""
        return self.config.block_size

    def new_cache(self, requests: int, max_len: int, device=None, dtype=None) -> DrafterCache:
        """An empty context cache for ``requests`` requests of up to ``max_len`` committed tokens."""
        p = self.fc.weight
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        shape = (requests, max_len, self.config.num_key_value_heads, self.config.head_dim)
        n = self.config.num_hidden_layers
        return DrafterCache(
            k=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)],
            v=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)],
            lens=torch.zeros(requests, dtype=torch.int64, device=device),
        )

    def project_context(self, target_hidden: torch.Tensor) -> torch.Tensor:
        """``[..., m*d]`` concatenated target layers -> ``hidden_norm(fc(.))`` ``[..., d]``."""
        return self.hidden_norm(self.fc(target_hidden))

    def append_context(self, cache: DrafterCache, target_hidden: torch.Tensor, num_new: torch.Tensor) -> None:
        """Append newly committed tokens to every layer's cache and advance ``cache.lens``.

        Args:
            target_hidden: ``[R, C, m*d]`` the target's selected layers (concatenated in
                ``target_layer_ids`` order) for the new tokens of each request, padded to C.
                Entry i of request r is the token at position ``cache.lens[r] + i``.
            num_new: ``[R]`` int64 in ``[0, C]``: how many entries of each request are real.
        """
        ctx = self.project_context(target_hidden)
        for i, layer in enumerate(self.layers):
            layer.self_attn.append_context(cache.k[i], cache.v[i], ctx, cache.lens, num_new)
        cache.lens.add_(num_new)

    # ----------------------------------------------------------------------------- forward

    def backbone(self, anchor: torch.Tensor, cache: DrafterCache) -> torch.Tensor:
        """The parallel backbone: anchor + mask tokens -> hidden states ``h [R, γ, d]`` (after
        the final norm), block positions ``cache.lens[r] + 0 .. γ-1``."""
        cfg = self.config
        R = anchor.shape[0]
        L = cfg.verification_block_size
        ids = torch.full((R, L), cfg.mask_token_id, dtype=torch.int64, device=anchor.device)
        ids[:, 0] = anchor
        x = self.embed(ids)
        positions = cache.lens[:, None] + torch.arange(L, device=anchor.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, cache.k[i], cache.v[i], cache.lens)
        x = self.norm(x)
        off = cfg.proposal_hidden_offset
        return x[:, off : off + cfg.block_size]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings; Gemma 4 multiplies them by ``sqrt(hidden_size)`` rounded to the
        weight dtype (as its scaled embedding does). Only the weight of a target embedding
        module passed to ``from_pretrained`` is used, so the scale is applied once."""
        x = self.embed_tokens(ids)
        scale = self.config.embed_scale
        return x if scale == 1.0 else x * torch.tensor(scale, dtype=x.dtype, device=x.device)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Base logits ``U``: ``lm_head``, then Gemma 4's soft cap ``c * tanh(U / c)`` (before
        the Markov bias, as DeepSpec applies it)."""
        logits = self.lm_head(hidden)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def head_weights(self) -> dict[str, Optional[torch.Tensor]]:
        """The keyword arguments of ``markov_draft`` taken from the Markov / confidence heads."""
        cfg = self.config
        mh = self.markov_head
        if mh is None:
            # No Markov head (DFlash): a rank-1 zero bias leaves L_k = U_k.
            w = self.lm_head.weight
            zeros = torch.zeros(cfg.vocab_size, 1, dtype=w.dtype, device=w.device)
            w1 = w2 = zeros
        else:
            w1, w2 = mh.markov_w1.weight, mh.markov_w2.weight
        out: dict[str, Optional[torch.Tensor]] = {"w1": w1, "w2": w2}
        if mh is not None and mh.markov_head_type == "gated":
            out["gate_weight"], out["gate_bias"] = mh.gate_proj.weight, mh.gate_proj.bias
        if mh is not None and mh.markov_head_type == "rnn":
            out["rnn_weight"], out["rnn_bias"] = mh.joint_proj.weight, mh.joint_proj.bias
        if self.confidence_head is not None:
            out["conf_weight"] = self.confidence_head.proj.weight.reshape(-1)
            out["conf_bias"] = self.confidence_head.proj.bias
        return out

    def draft(
        self,
        anchor: torch.Tensor,
        cache: DrafterCache,
        temperature: torch.Tensor,
        seed: torch.Tensor,
        offset: torch.Tensor,
        conf_scale: Optional[torch.Tensor] = None,
        num_candidates: Optional[int] = None,
    ) -> DraftOutput:
        """One block draft: backbone, ``lm_head``, then ``torch.ops.dspark.markov_draft``.

        ``anchor [R]`` int64 (the last committed token, at position ``cache.lens[r]``);
        ``temperature [R]`` float32, ``seed/offset [R]`` int64 as in SPEC §3. With
        ``num_candidates = K`` the head runs pruned (``markov_draft_topk``, SPEC §10): the
        output's ``draft_ids [R, γ, K]`` lists the backbone's K best ids per position and
        ``draft_logits`` is ``[R, γ, K]`` (verify with ``draft_ids``).
        """
        hidden = self.backbone(anchor, cache)
        base = self.compute_logits(hidden)
        hw = self.head_weights()
        heads = dict(hidden=hidden, gate_weight=hw.get("gate_weight"), gate_bias=hw.get("gate_bias"),
                     rnn_weight=hw.get("rnn_weight"), rnn_bias=hw.get("rnn_bias"), conf_weight=hw.get("conf_weight"),
                     conf_bias=hw.get("conf_bias"), conf_scale=conf_scale)
        if num_candidates is None:
            tokens, draft_logits, logprob, conf = torch.ops.dspark.markov_draft(
                base, anchor, hw["w1"], hw["w2"], temperature, seed, offset, **heads)
            return DraftOutput(tokens, draft_logits, logprob, conf, hidden, base)
        tokens, ids, draft_logits, logprob, conf = torch.ops.dspark.markov_draft_topk(
            base, anchor, hw["w1"], hw["w2"], temperature, seed, offset, num_candidates, **heads)
        return DraftOutput(tokens, draft_logits, logprob, conf, hidden, base, ids)

    def step(self, cache, target_hidden, num_new, anchor, temperature, seed, offset, conf_scale=None,
             num_candidates=None) -> DraftOutput:
        """``append_context`` for the newly committed tokens, then ``draft``: one full round."""
        self.append_context(cache, target_hidden, num_new)
        return self.draft(anchor, cache, temperature, seed, offset, conf_scale, num_candidates)

    forward = draft

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        embed_tokens: Union[torch.Tensor, nn.Module, None] = None,
        lm_head: Union[torch.Tensor, nn.Module, None] = None,
        dtype: Optional[torch.dtype] = None,
        device: Union[str, torch.device, None] = None,
    ) -> "DSparkDrafter":
        """Load a DeepSpec DSpark checkpoint directory (``config.json`` + ``*.safetensors``).

        ``embed_tokens`` / ``lm_head`` (a weight tensor or a module with ``.weight``, e.g. the
        target's) are used when given and override the checkpoint's; otherwise the
        checkpoint must contain ``embed_tokens.weight`` / ``lm_head.weight``. A leading
        ``model.`` on every key is accepted. Any key the drafter does not know, any
        parameter the checkpoint lacks, or any shape mismatch raises ``ValueError`` listing
        all of them. ``dtype`` defaults to the checkpoint tensors' dtype.
        """
        from safetensors.torch import load_file

        with open(os.path.join(path, "config.json")) as f:
            cfg = DSparkConfig.from_dict(json.load(f))
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise ValueError(f"DSpark checkpoint {path!r}: no *.safetensors file")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(f, device=str(device) if device is not None else "cpu"))
        return cls.from_state_dict(cfg, state, embed_tokens=embed_tokens, lm_head=lm_head, dtype=dtype, device=device)

    @classmethod
    def from_state_dict(cls, config, state, embed_tokens=None, lm_head=None, dtype=None, device=None) -> "DSparkDrafter":
        """Build from a DeepSpec-named state dict (see :meth:`from_pretrained`)."""
        cfg = config if isinstance(config, DSparkConfig) else DSparkConfig.from_dict(config)
        if state and all(k.startswith("model.") for k in state):
            state = {k[len("model.") :]: v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
        with torch.device("meta"):
            model = cls(cfg)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        given = dict(state)
        for name, src in (("embed_tokens.weight", embed_tokens), ("lm_head.weight", lm_head)):
            if src is not None:
                given[name] = src.weight if isinstance(src, nn.Module) else src
        unknown = sorted(set(given) - set(expected))
        missing = sorted(set(expected) - set(given))
        wrong = sorted(f"{k}: expected {tuple(expected[k])}, got {tuple(given[k].shape)}"
                       for k in set(given) & set(expected) if tuple(given[k].shape) != tuple(expected[k]))
        if unknown or missing or wrong:
            parts = []
            if missing:
                parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown keys ({len(unknown)}): {', '.join(unknown)}")
            if wrong:
                parts.append(f"shape mismatches ({len(wrong)}): {'; '.join(wrong)}")
            raise ValueError("DSpark checkpoint does not match the drafter config: " + " | ".join(parts))
        if dtype is None:
            floats = [v.dtype for k, v in state.items() if v.is_floating_point()]
            dtype = floats[0] if floats else torch.float32
        tensors = {k: v.detach().to(device=device if device is not None else v.device, dtype=dtype) for k, v in given.items()}
        model.load_state_dict(tensors, strict=True, assign=True)
        model.requires_grad_(False)
        return model.eval()
