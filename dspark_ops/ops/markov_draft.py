"""``markov_draft``: the sequential Markov / gated / RNN head fused with sampling and the
confidence head (SPEC §3); ``markov_draft_topk``: the same pruned to the backbone's K best
candidates per position (SPEC §10)."""

from __future__ import annotations

from typing import Optional

import torch

from ._checks import FLOAT_DTYPES, ArgChecks
from ._documented import documented
from .arguments import PerRequest, request_args


@documented
def markov_draft(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    temperature: PerRequest,
    seed: PerRequest,
    offset: PerRequest,
    hidden: Optional[torch.Tensor] = None,
    gate_weight: Optional[torch.Tensor] = None,
    gate_bias: Optional[torch.Tensor] = None,
    rnn_weight: Optional[torch.Tensor] = None,
    rnn_bias: Optional[torch.Tensor] = None,
    conf_weight: Optional[torch.Tensor] = None,
    conf_bias: Optional[torch.Tensor] = None,
    conf_scale: Optional[torch.Tensor] = None,
    top_k: Optional[PerRequest] = None,
    top_p: Optional[PerRequest] = None,
    min_p: Optional[PerRequest] = None,
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
        temperature: ``[R]`` float32 (a Python float or list is converted on the logits' device).
        seed, offset: ``[R]`` int64 keys of the counter-based generator (never changed); Python
            ints or lists accepted.
        hidden: ``[R, γ, d]`` backbone hidden states ``h_k``; required by the gated and RNN
            heads and by the confidence head, ignored otherwise.
        gate_weight, gate_bias: ``[r, d+r]``, ``[r]`` (``gate_proj``), input ``[h_k ; e_k]``.
        rnn_weight, rnn_bias: ``[3r, 2r+d]``, ``[3r]`` (``joint_proj``), input
            ``[s_{k-1} ; e_k ; h_k]``, output chunks (gate, candidate, output).
        conf_weight, conf_bias: ``[d]`` (input ``h_k``) or ``[d+r]`` (input ``[h_k ; e_k]``), ``[1]``.
        conf_scale: ``[γ]`` float32 Sequential Temperature Scaling multipliers (default all 1,
            see :mod:`dspark_ops.speculative.calibration`); ignored (but still checked) without a
            confidence head.
        top_k, top_p, min_p: per-request engine filters (SPEC §9; ``[R]`` tensors, Python
            scalars or lists): ``top_k`` int64 (``<= 0`` or ``>= V``: off), ``top_p`` in
            ``(0, 1]`` (1: off), ``min_p`` in ``[0, 1]`` (0: off). For sampled requests they are
            applied to ``round(L_k) / T`` before sampling (min-p, then top-k, then top-p, each
            keeping an upper set of values with its ties): every filtered-out entry of
            ``draft_logits`` is returned as ``-inf``, so that ``draft_logits`` describe exactly
            the distribution ``x_k`` was drawn from (verification stays lossless), and
            ``token_logprob`` is under the filtered distribution. Greedy requests ignore them;
            off values give outputs bit-identical to passing no filter. Values outside those
            ranges raise on CPU (on CUDA with ``DSPARK_CHECK=1``; otherwise clamped). CUDA:
            the dense kernel raises when a filter is given (use :func:`markov_draft_topk`,
            which filters on CUDA, or the CPU).

    Every logits/weight/activation argument must share the dtype of ``base_logits`` (a
    mismatch is an error); arithmetic is float32. Passing both gated and RNN weights, or a
    weight without its bias (or the reverse), is an error.

    Returns:
        ``tokens [R, γ]`` int64; ``draft_logits [R, γ, V]`` (dtype of ``base_logits``);
        ``token_logprob [R, γ]`` float32 ``log q_k(x_k)`` from the rounded logits (0 for
        greedy requests; -inf where the row has no finite normaliser: no finite logit, or a +inf); ``confidence [R, γ]`` float32
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
    a = _per_request(base_logits, temperature, seed, offset, top_k, top_p, min_p)
    return torch.ops.dspark.markov_draft(
        base_logits, anchor, w1, w2, a["temperature"], a["seed"], a["offset"], hidden, gate_weight, gate_bias,
        rnn_weight, rnn_bias, conf_weight, conf_bias, conf_scale, a["top_k"], a["top_p"], a["min_p"],
    )


def _per_request(base_logits, temperature, seed, offset, top_k, top_p, min_p):
    """The per-request arguments as ``[R]`` tensors on the device of the logits (Python scalars
    and lists converted once; tensors passed through for the op to check)."""
    return request_args(base_logits.shape[0], base_logits.device, temperature=temperature, seed=seed, offset=offset,
                        top_k=top_k, top_p=top_p, min_p=min_p)


def _markov_checks(op, base_logits, anchor, w1, w2, temperature, seed, offset, hidden, gate_weight, gate_bias,
                   rnn_weight, rnn_bias, conf_weight, conf_bias, conf_scale, top_k, top_p, min_p):
    """The checks of ``check_markov_draft_args`` shared by both Markov ops' fake kernels."""
    c = ArgChecks(op, base_logits)
    c.dtype(base_logits, "base_logits", FLOAT_DTYPES)
    c.dim(base_logits, "base_logits", 3)
    requests, gamma, vocab = base_logits.shape
    c.check(vocab > 0, "base_logits", lambda: f"must have a vocabulary size in [1, 2^31), got {vocab}")
    c.check(vocab < 2**31, "base_logits", lambda: f"must have a vocabulary size in [1, 2^31), got {vocab}")
    c.check(gamma < 65536, "base_logits", lambda: f"must have a block size γ < 65536, got {gamma}")

    def like(t, name, shape):  # every logits/weight/activation argument shares base_logits' dtype
        c.like(t, name, base_logits, "base_logits", shape)

    c.index_vector(anchor, "anchor", requests, "R, the rows of base_logits")
    like(w1, "w1", [(vocab, "V, the vocabulary of base_logits"), None])
    rank = w1.size(1)
    c.check(rank > 0, "w1", lambda: f"must have a rank r >= 1, got shape {tuple(w1.shape)}")
    like(w2, "w2", [(vocab, "V, the nn.Linear(r, V) weight layout"), (rank, "r, the columns of w1")])
    c.float_vector(temperature, "temperature", requests, "R")
    c.index_vector(seed, "seed", requests, "R")
    c.index_vector(offset, "offset", requests, "R")
    for weight, bias, wname, bname in (
        (gate_weight, gate_bias, "gate_weight", "gate_bias"),
        (rnn_weight, rnn_bias, "rnn_weight", "rnn_bias"),
        (conf_weight, conf_bias, "conf_weight", "conf_bias"),
    ):
        c.check(weight is not None or bias is None, wname, f"is required when {bname} is given")
        c.check(bias is not None or weight is None, bname, f"is required when {wname} is given")
    c.check(
        gate_weight is None or rnn_weight is None,
        "rnn_weight",
        "cannot be combined with gate_weight: pass the gated head (gate_weight, gate_bias) or the RNN head "
        "(rnn_weight, rnn_bias), not both",
    )
    if hidden is not None:
        like(hidden, "hidden", [(requests, "R"), (gamma, "γ"), None])
        d = hidden.size(2)
    else:
        needs = next((n for t, n in ((gate_weight, "gate_weight"), (rnn_weight, "rnn_weight"),
                                     (conf_weight, "conf_weight")) if t is not None), None)
        c.check(needs is None, "hidden", lambda: f"[R, γ, d] is required when {needs} is given")
        d = 0
    if gate_weight is not None:
        like(gate_weight, "gate_weight", [(rank, "r"), (d + rank, "d + r, input [h_k ; e_k]")])
        like(gate_bias, "gate_bias", [(rank, "r")])
    if rnn_weight is not None:
        like(rnn_weight, "rnn_weight", [(3 * rank, "3r, chunks gate, candidate, output"),
                                        (2 * rank + d, "2r + d, input [s_{k-1} ; e_k ; h_k]")])
        like(rnn_bias, "rnn_bias", [(3 * rank, "3r")])
    if conf_weight is not None:
        like(conf_weight, "conf_weight", [None])
        n = conf_weight.size(0)
        c.check(
            (n == d) | (n == d + rank),
            "conf_weight",
            lambda: f"must have size d = {d} (input h_k) or d + r = {d + rank} (input [h_k ; e_k]), got shape "
            f"{tuple(conf_weight.shape)}",
        )
        like(conf_bias, "conf_bias", [(1, "a single bias")])
    if conf_scale is not None:
        c.float_vector(conf_scale, "conf_scale", gamma, "γ, one scale per position")
    for t, name, check in ((top_k, "top_k", c.index_vector), (top_p, "top_p", c.float_vector),
                           (min_p, "min_p", c.float_vector)):
        if t is not None:
            check(t, name, requests, "R")
    return c


@torch.library.register_fake("dspark::markov_draft")
def _markov_draft_fake(base_logits, anchor, w1, w2, temperature, seed, offset, hidden=None, gate_weight=None,
                       gate_bias=None, rnn_weight=None, rnn_bias=None, conf_weight=None, conf_bias=None,
                       conf_scale=None, top_k=None, top_p=None, min_p=None):
    _markov_checks("dspark::markov_draft", base_logits, anchor, w1, w2, temperature, seed, offset, hidden,
                   gate_weight, gate_bias, rnn_weight, rnn_bias, conf_weight, conf_bias, conf_scale, top_k, top_p,
                   min_p)
    requests, gamma = base_logits.shape[:2]
    tokens = anchor.new_empty((requests, gamma))
    draft_logits = base_logits.new_empty(base_logits.shape)
    token_logprob = base_logits.new_empty((requests, gamma), dtype=torch.float32)
    confidence = base_logits.new_empty((requests, gamma), dtype=torch.float32)
    return tokens, draft_logits, token_logprob, confidence


@documented
def markov_draft_topk(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    temperature: PerRequest,
    seed: PerRequest,
    offset: PerRequest,
    num_candidates: int,
    hidden: Optional[torch.Tensor] = None,
    gate_weight: Optional[torch.Tensor] = None,
    gate_bias: Optional[torch.Tensor] = None,
    rnn_weight: Optional[torch.Tensor] = None,
    rnn_bias: Optional[torch.Tensor] = None,
    conf_weight: Optional[torch.Tensor] = None,
    conf_bias: Optional[torch.Tensor] = None,
    conf_scale: Optional[torch.Tensor] = None,
    top_k: Optional[PerRequest] = None,
    top_p: Optional[PerRequest] = None,
    min_p: Optional[PerRequest] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`markov_draft` pruned to the backbone's ``K = num_candidates`` best ids per position.

    For each request and position k, the candidates ``C_k`` are the K ids with the largest
    ``U_k = base_logits[:, k-1]`` (NaN counts as -inf; ties: the lower id first), listed best
    first in ``draft_ids``. Only those K rows of ``w2`` are read: ``draft_logits[.., j] =
    round(U_k(c) + B(x_{k-1})(c))`` for ``c = draft_ids[.., j]``, with the head ``B`` and the
    rounding of :func:`markov_draft`, and ``x_k`` is drawn from ``softmax(draft_logits / T)``
    over ``C_k`` (greedy: the largest rounded logit, lowest vocabulary id on ties). The Gumbel
    noise of a candidate is keyed by its vocabulary id (``Purpose.DRAFT_SAMPLE``, position k,
    index = id), and each candidate's logit is computed with exactly the dense op's arithmetic,
    so with ``K = V`` the tokens and confidences equal :func:`markov_draft`'s on the same device,
    ``draft_logits`` are its logits permuted by ``draft_ids``, and ``token_logprob`` agrees up to
    the order of the softmax sum. A row without a finite logit draws its first candidate.

    The draft distribution is sparse: ``q(v) = softmax(draft_logits / T)[j]`` where
    ``draft_ids[j] = v``, and 0 for every other id. Verify with ``verify_chain`` /
    ``verify_tree`` given ``draft_ids`` (SPEC §10), which read O(K) entries per row.

    Args:
        as :func:`markov_draft`, plus ``num_candidates``: K in ``[1, V]``. The filters
        ``top_k / top_p / min_p`` apply to the K candidates' distribution (``top_k >= K`` keeps
        them all); filtered-out candidates keep their id in ``draft_ids`` with a ``-inf`` logit.

    Returns:
        ``tokens [R, γ]`` int64 (each one of its position's candidates);
        ``draft_ids [R, γ, K]`` int64; ``draft_logits [R, γ, K]`` (dtype of ``base_logits``);
        ``token_logprob [R, γ]`` float32 ``log q_k(x_k)`` (0 for greedy requests);
        ``confidence [R, γ]`` float32, as :func:`markov_draft` (it does not depend on K).

    Cost: ``K`` rows of ``w2`` per request and position instead of ``V`` (the dense op reads all
    of ``w2`` per position), plus a selection pass over ``U_k``. On CUDA, ``K <= 1024`` uses a
    radix select in one block per row; larger K falls back to ``torch.topk`` on packed
    (value, id) keys (same result, more memory traffic).
    """
    a = _per_request(base_logits, temperature, seed, offset, top_k, top_p, min_p)
    return torch.ops.dspark.markov_draft_topk(
        base_logits, anchor, w1, w2, a["temperature"], a["seed"], a["offset"], num_candidates, hidden, gate_weight,
        gate_bias, rnn_weight, rnn_bias, conf_weight, conf_bias, conf_scale, a["top_k"], a["top_p"], a["min_p"],
    )


@torch.library.register_fake("dspark::markov_draft_topk")
def _markov_draft_topk_fake(base_logits, anchor, w1, w2, temperature, seed, offset, num_candidates, hidden=None,
                            gate_weight=None, gate_bias=None, rnn_weight=None, rnn_bias=None, conf_weight=None,
                            conf_bias=None, conf_scale=None, top_k=None, top_p=None, min_p=None):
    c = _markov_checks("dspark::markov_draft_topk", base_logits, anchor, w1, w2, temperature, seed, offset, hidden,
                       gate_weight, gate_bias, rnn_weight, rnn_bias, conf_weight, conf_bias, conf_scale, top_k, top_p,
                       min_p)
    requests, gamma, vocab = base_logits.shape
    c.check(1 <= num_candidates <= vocab, "num_candidates",
            lambda: f"must be in [1, V={vocab}], got {num_candidates}")
    tokens = anchor.new_empty((requests, gamma))
    token_logprob = base_logits.new_empty((requests, gamma), dtype=torch.float32)
    confidence = base_logits.new_empty((requests, gamma), dtype=torch.float32)
    draft_ids = anchor.new_empty((requests, gamma, num_candidates))
    draft_logits = base_logits.new_empty((requests, gamma, num_candidates))
    return tokens, draft_ids, draft_logits, token_logprob, confidence
