"""RoPE scaling from a model config: the ``inv_freq`` table and ``attention_scaling`` that
``qk_norm_rope`` / ``append_context_kv`` take (see :mod:`dspark_ops.ops.block_draft`).

A DSpark / DFlash drafter inherits its RoPE from the target's config (DeepSpec copies the
target config into the draft config), so the draft must rotate exactly like the target.
Every Hugging Face ``rope_type`` initialiser returns ``(inv_freq [Dh/2], attention_scaling)``;
this module computes the same two things without importing ``transformers``:

* ``default``: ``theta ** (-2i / Dh)`` (``inv_freq = None``: the kernels' own formula);
* ``linear``: default / ``factor``;
* ``dynamic`` (dynamic NTK): its frequencies at initialisation, which are the default ones.
  Hugging Face grows the base only once a sequence exceeds ``max_position_embeddings``;
  the drafter caches rotated context keys, so it keeps the initial table (identical up to
  that length, which is what DeepSpec's drafters are trained and evaluated at);
* ``yarn``: the interpolation / extrapolation blend and its ``attention_factor``;
* ``llama3``: the wavelength-banded rescaling;
* ``proportional`` (Gemma 4's full-attention layers): the first
  ``int(partial_rotary_factor * Dh / 2)`` frequencies with exponent ``2i / Dh``, zeros for
  the rest (those pairs are left unrotated), all divided by ``factor`` when set.

Powers are taken in float64 and rounded once to float32 (the correctly rounded float32
power, as the kernels' default path computes it); the rest is float32, as in
``transformers``. ``longrope`` (length-dependent factor sets), multimodal RoPE and a
``partial_rotary_factor`` below 1 outside ``proportional`` (a different rotate-half
layout) are refused with an error naming the type.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import torch

__all__ = ["RopeSpec", "SUPPORTED_ROPE_TYPES", "rope_from_config"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "proportional")


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """``theta``; ``inv_freq [Dh/2]`` float32 on the CPU, or None for the default formula;
    ``attention_scaling`` multiplying cos and sin."""

    theta: float
    inv_freq: Optional[torch.Tensor] = None
    attention_scaling: float = 1.0


def _rope_params(config: dict[str, Any], layer_type: Optional[str]) -> dict[str, Any]:
    """The RoPE parameter dict of ``config``: ``rope_parameters`` (per layer type when keyed
    so, e.g. Gemma 4's ``{"full_attention": {...}, "sliding_attention": {...}}``) or the
    older ``rope_scaling``, with ``rope_theta`` / ``partial_rotary_factor`` filled in from
    the top level when the dict lacks them (a top-level ``None`` is ignored)."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) or v is None for v in params.values()):
        key = layer_type or "full_attention"
        if params.get(key) is None:
            raise ValueError(f"rope_parameters has no entry for layer type {key!r} (has {sorted(params)})")
        params = params[key]
    if not isinstance(params, dict):
        params = config.get("rope_scaling") if isinstance(config.get("rope_scaling"), dict) else {}
    out = dict(params)
    for key in ("rope_theta", "partial_rotary_factor"):
        if out.get(key) is None and config.get(key) is not None:
            out[key] = config[key]
    return out


def _powers(theta: float, exponents: torch.Tensor) -> torch.Tensor:
    """``theta ** exponents`` in float64, rounded once to float32."""
    theta32 = float(torch.tensor(theta, dtype=torch.float32))
    return (theta32 ** exponents.double()).float()


def _default_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / _powers(theta, torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)


def _yarn(p: dict[str, Any], config: dict[str, Any], theta: float, dim: int) -> tuple[torch.Tensor, float]:
    factor = p.get("factor")
    original = p.get("original_max_position_embeddings") or config.get("max_position_embeddings")
    if factor is None:
        factor = config["max_position_embeddings"] / original

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        m, m_all = p.get("mscale"), p.get("mscale_all_dim")
        attention = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: no division by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = _powers(theta, torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # the share of extrapolation (original frequencies)
    return interpolation * (1 - keep) + extrapolation * keep, float(attention)


def _llama3(p: dict[str, Any], theta: float, dim: int) -> torch.Tensor:
    inv_freq = _default_inv_freq(theta, dim)
    factor, low_f, high_f = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low_f, old / high_f
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low_f) / (high_f - low_f)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_from_config(config: dict[str, Any], head_dim: int, layer_type: Optional[str] = None,
                     default_dim: Optional[int] = None) -> RopeSpec:
    """The RoPE of a model config dict for attention heads of size ``head_dim``.

    ``layer_type`` picks the entry of a per-layer-type ``rope_parameters`` (default
    ``"full_attention"``). ``default_dim`` is the head size the ``default`` type sizes its
    frequencies by, when a config says it differently (DeepSpec's Gemma 4 path uses
    ``head_dim``, not ``global_head_dim``); it must then equal ``head_dim``.
    """
    p = _rope_params(config, layer_type)
    kind = p.get("rope_type", p.get("type")) or "default"
    theta = p.get("rope_theta")
    if theta is None:
        raise ValueError("RoPE config: rope_theta is missing (top level or in rope_parameters)")
    theta = float(theta)
    partial = float(p.get("partial_rotary_factor") or 1.0)
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"RoPE config: rope_type {kind!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if kind == "proportional":
        angles = int(partial * head_dim // 2)
        rotated = 1.0 / _powers(theta, torch.arange(0, 2 * angles, 2, dtype=torch.int64).float() / head_dim)
        inv_freq = torch.cat([rotated, torch.zeros(head_dim // 2 - angles)])
        return RopeSpec(theta, inv_freq / float(p.get("factor") or 1.0))
    if partial != 1.0:
        raise ValueError(f"RoPE config: partial_rotary_factor {partial} is only supported with rope_type 'proportional'")
    if kind in ("default", "dynamic"):
        if default_dim is not None and default_dim != head_dim:
            raise ValueError(f"RoPE config: default RoPE sized by head_dim {default_dim} does not fit heads of {head_dim}")
        return RopeSpec(theta)
    if kind == "linear":
        return RopeSpec(theta, _default_inv_freq(theta, head_dim) / float(p["factor"]))
    if kind == "yarn":
        inv_freq, attention = _yarn(p, config, theta, head_dim)
        return RopeSpec(theta, inv_freq, attention)
    return RopeSpec(theta, _llama3(p, theta, head_dim))
