"""``markov_draft``: the sequential Markov / gated / RNN head fused with sampling and the
confidence head (SPEC §3)."""

from __future__ import annotations

from typing import Optional

import torch

from ._documented import documented


@documented
def markov_draft(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    hidden: Optional[torch.Tensor] = None,
    gate_weight: Optional[torch.Tensor] = None,
    gate_bias: Optional[torch.Tensor] = None,
    rnn_weight: Optional[torch.Tensor] = None,
    rnn_bias: Optional[torch.Tensor] = None,
    conf_weight: Optional[torch.Tensor] = None,
    conf_bias: Optional[torch.Tensor] = None,
    conf_scale: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draft γ tokens left to right: ``L_k = U_k + B(x_{k-1})``, sample ``x_k``, confidence ``c_k``.

    For k = 1..γ, with ``e_k = w1[x_{k-1}]`` (``x_0 = anchor``), the head is chosen by the
    weights passed:

    - vanilla (no gate/rnn weights): ``L_k = U_k + w2 @ e_k``;
    - gated (``gate_weight``, ``gate_bias``): ``g = sigmoid(gate_weight @ [h_k ; e_k] + gate_bias)``,
      ``L_k = U_k + w2 @ (g * e_k)``;
    - RNN (``rnn_weight``, ``rnn_bias``): ``(a, b, o) = split(rnn_weight @ [s_{k-1} ; e_k ; h_k] + rnn_bias)``,
      ``s_k = sigmoid(a) * s_{k-1} + (1 - sigmoid(a)) * tanh(b)``, ``s_0 = 0``, ``L_k = U_k + w2 @ tanh(o)``.

    ``L_k`` is computed in float32, rounded to the dtype of ``base_logits`` and returned as
    ``draft_logits[:, k-1]``; the token is sampled from exactly those rounded values,
    ``x_k ~ softmax(round(L_k) / T)``, by a Gumbel-max race whose noise is Philox
    ``(seed, offset, Purpose.DRAFT_SAMPLE, position k, index = vocab id)``; greedy requests
    (``T <= 1e-5``) take ``argmax round(L_k)``, lowest index on ties. NaN logits have
    probability 0 (and never win the argmax); a row with no finite logit gives token 0.

    Args:
        base_logits: ``[R, γ, V]`` float32/bf16/fp16, the backbone's logits ``U_k``.
        anchor: ``[R]`` int64, ``x_0`` (the last committed token), in ``[0, V)``.
        w1: ``[V, r]`` Markov embedding (``markov_w1.weight``).
        w2: ``[V, r]`` Markov projection (``markov_w2.weight``, ``nn.Linear(r, V)`` layout).
            The CUDA kernel supports ``r <= 512`` (DeepSpec uses 256).
        temperature: ``[R]`` float32.
        seed, offset: ``[R]`` int64 keys of the counter-based generator (never changed).
        hidden: ``[R, γ, d]`` backbone hidden states ``h_k``; required by the gated and RNN
            heads and by the confidence head, ignored otherwise.
        gate_weight, gate_bias: ``[r, d+r]``, ``[r]`` (``gate_proj``), input ``[h_k ; e_k]``.
        rnn_weight, rnn_bias: ``[3r, 2r+d]``, ``[3r]`` (``joint_proj``), input
            ``[s_{k-1} ; e_k ; h_k]``, output chunks (gate, candidate, output).
        conf_weight, conf_bias: ``[d]`` (input ``h_k``) or ``[d+r]`` (input ``[h_k ; e_k]``), ``[1]``.
        conf_scale: ``[γ]`` float32 Sequential Temperature Scaling multipliers (default all 1,
            see :mod:`dspark_ops.speculative.calibration`); ignored (but still checked) without a
            confidence head.

    Every logits/weight/activation argument must share the dtype of ``base_logits`` (a
    mismatch is an error); arithmetic is float32. Passing both gated and RNN weights, or a
    weight without its bias (or the reverse), is an error.

    Returns:
        ``tokens [R, γ]`` int64; ``draft_logits [R, γ, V]`` (dtype of ``base_logits``);
        ``token_logprob [R, γ]`` float32 ``log q_k(x_k)`` from the rounded logits (0 for
        greedy requests); ``confidence [R, γ]`` float32
        ``sigmoid(conf_scale[k-1] * (conf_weight · f_k + conf_bias))`` with ``f_k = h_k`` or
        ``[h_k ; e_k]`` (it depends on ``x_{k-1}``, never on ``x_k``), all ones without a
        confidence head.

    Results do not depend on the other requests of the batch (every dot product runs in one
    fixed order), and CPU and CUDA draw the same noise, so they agree except where float
    rounding flips a near-tie.

    An anchor outside ``[0, V)`` raises on CPU; on CUDA it raises only with ``DSPARK_CHECK=1``
    (the check needs a host sync), and otherwise it is clamped into ``[0, V)`` so the kernel
    never reads outside ``w1``.
    """
    return torch.ops.dspark.markov_draft(
        base_logits, anchor, w1, w2, temperature, seed, offset, hidden, gate_weight, gate_bias,
        rnn_weight, rnn_bias, conf_weight, conf_bias, conf_scale,
    )


@torch.library.register_fake("dspark::markov_draft")
def _markov_draft_fake(base_logits, anchor, w1, w2, temperature, seed, offset, hidden=None, gate_weight=None,
                       gate_bias=None, rnn_weight=None, rnn_bias=None, conf_weight=None, conf_bias=None,
                       conf_scale=None):
    torch._check(base_logits.dim() == 3, lambda: "dspark::markov_draft: argument 'base_logits' must have 3 dimensions")
    torch._check(
        gate_weight is None or rnn_weight is None,
        lambda: "dspark::markov_draft: argument 'rnn_weight' cannot be combined with gate_weight",
    )
    requests, gamma, _ = base_logits.shape
    tokens = anchor.new_empty((requests, gamma))
    draft_logits = base_logits.new_empty(base_logits.shape)
    token_logprob = base_logits.new_empty((requests, gamma), dtype=torch.float32)
    confidence = base_logits.new_empty((requests, gamma), dtype=torch.float32)
    return tokens, draft_logits, token_logprob, confidence
