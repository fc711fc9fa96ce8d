"""Drafters for :func:`dspark_ops.generate`: the protocol and simple built-in drafters.

The drafter protocol (all tensors on the target's device; rows are the batch's active
requests, in order, exactly as for the target):

``begin(tokens [N], lengths [R], hidden [N, H] | None, capacity)``
    A new batch: the prompts (flattened, as in ``Target.prefill``), the target's hidden
    states of every prompt position, and the bound on positions any request will reach
    (prompt + generated + one block), for drafters that preallocate a context cache.
``propose(anchor [R], temperature [R], seed [R], offset [R], gamma) -> Proposal``
    Draft ``gamma`` tokens after each request's anchor ``x_0`` (its last committed token,
    not yet seen by the target). Randomness must come from the counter-based generator keyed
    by ``(seed, offset)`` (``Purpose.DRAFT_SAMPLE``, position k, index = vocab id, as
    ``markov_draft`` does) so that runs are reproducible and batch invariant.
``commit(tokens [N], lengths [R], keep [R], hidden [N, H] | None)``
    The round's verify inputs ``[x_0, x_1 .. x_ℓ]`` (flattened, ``lengths = ℓ + 1``) and the
    target's hidden states for them; the first ``keep[r]`` of them (the anchor and the
    accepted drafts) are now committed context. The next anchor comes with ``propose``.
``retain(index [A])``
    Keep only the requests ``index`` (finished requests leave the batch).

A :class:`Proposal` carries ``tokens [R, γ]`` int64, ``draft_logits [R, γ, V]`` or None,
``confidence [R, γ]`` float32 or None, and ``draft_ids [R, γ, K]`` int64 or None: with ids,
the draft distribution is sparse (SPEC §10: ``draft_logits [R, γ, K]`` over the listed ids,
probability 0 elsewhere) and is verified with ``draft_ids``. Sampled drafts (``T > 0``) must be drawn from
``softmax(draft_logits / T)`` computed from exactly the returned values (or be
deterministic, with ``draft_logits = None``): that is what keeps verification lossless.
``confidence[r, k-1]`` estimates P(x_k accepted | x_1..x_{k-1} accepted) and feeds the
length schedulers; None means all ones.

:class:`DSparkProposer` runs the DSpark drafter (``dspark_ops.speculative.dspark_drafter``, built on
``block_attention`` and ``markov_draft``) under this protocol. The other drafters here need
neither and exist for tests, demos and baselines.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol

import torch

from ..ops.greedy import inverse_temperature, is_greedy
from ..ops.random_bits import Purpose, gumbel, random_bits
from .dspark_drafter import DrafterCache, DSparkDrafter
from .targets import pad_ragged, ragged_index


@dataclasses.dataclass
class Proposal:
    """A drafted block: ``tokens [R, γ]``, ``draft_logits [R, γ, V]`` (``[R, γ, K]`` with ids) or
    None, ``confidence [R, γ]`` or None, ``draft_ids [R, γ, K]`` (a pruned draft) or None."""

    tokens: torch.Tensor
    draft_logits: Optional[torch.Tensor] = None
    confidence: Optional[torch.Tensor] = None
    draft_ids: Optional[torch.Tensor] = None


class Drafter(Protocol):
    """The drafter protocol of :func:`dspark_ops.generate` (see the module docstring)."""

    def begin(self, tokens: torch.Tensor, lengths: torch.Tensor, hidden: Optional[torch.Tensor], capacity: int) -> None: ...

    def propose(self, anchor: torch.Tensor, temperature: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, gamma: int) -> Proposal: ...

    def commit(self, tokens: torch.Tensor, lengths: torch.Tensor, keep: torch.Tensor, hidden: Optional[torch.Tensor]) -> None: ...

    def retain(self, index: torch.Tensor) -> None: ...


def sample_logits(logits: torch.Tensor, temperature: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, position: int) -> torch.Tensor:
    """One token per row from ``softmax(logits / T)`` by the Gumbel-max race with noise of
    ``Purpose.DRAFT_SAMPLE`` at ``position`` (index = vocab id), or ``argmax logits`` (lowest
    index on ties) where ``T <= 1e-5``. ``logits [R, V]`` float; NaN counts as -inf.
    The same numbers as ``markov_draft`` draws for block position ``position``."""
    vocab = logits.shape[-1]
    x = logits.float()
    x = torch.where(torch.isnan(x), torch.full_like(x, float("-inf")), x)
    greedy = is_greedy(temperature)
    t = torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    noise = gumbel(random_bits(seed, offset, Purpose.DRAFT_SAMPLE, position, vocab))
    score = torch.where(greedy[:, None], x, x * inverse_temperature(t) + noise)
    return score.argmax(-1)  # torch.argmax returns the first maximal index


class ModelDrafter:
    """A separate autoregressive draft model run γ steps per round, as in assisted
    generation: any model behind the :class:`~dspark_ops.speculative.targets.Target`
    protocol that also offers ``truncate`` (:class:`TinyCausalLM`, or a Hugging Face causal
    LM through :class:`~dspark_ops.speculative.targets.HFCausalLM`), with its own cache.

    It ignores the target's hidden states. ``draft_logits`` are its float32 logits and each
    ``x_k`` is sampled from exactly those values (:func:`sample_logits`); ``confidence`` is
    the top-1 probability of ``softmax(L_k)`` (a heuristic, uncalibrated). After a round it
    keeps the cache entries of the drafts that the target accepted (``truncate``) and only
    runs the one token it has not seen (the last accepted draft, after a full accept).
    """

    def __init__(self, model):
        self.model = model
        self._lens: Optional[torch.Tensor] = None  # [R] positions the draft cache holds

    def begin(self, tokens, lengths, hidden, capacity):
        self.model.prefill(tokens, lengths, capacity)
        self._lens = lengths.clone()

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        """Feed one token per request (``x [R]``), keep it, return its logits ``[R, V]``."""
        ones = torch.ones_like(x)
        logits = self.model.verify(x, ones, 1).logits.float()
        self.model.rollback(ones)
        return logits

    def propose(self, anchor, temperature, seed, offset, gamma):
        x = anchor
        tokens, logits = [], []
        for k in range(1, gamma + 1):
            step = self._step(x)
            x = sample_logits(step, temperature, seed, offset, k)
            tokens.append(x)
            logits.append(step)
        tokens = torch.stack(tokens, 1)
        logits = torch.stack(logits, 1)
        confidence = torch.softmax(logits, -1).amax(-1)
        self._gamma = gamma
        return Proposal(tokens, logits, confidence)

    def commit(self, tokens, lengths, keep, hidden):
        # The cache holds x_0 .. x_{γ-1} after the old length; keep the committed ones and
        # feed x_γ where all γ drafts were accepted (keep = γ + 1).
        seen = keep.clamp_max(self._gamma)
        self.model.truncate(self._lens + seen)
        padded, _, _ = pad_ragged(tokens, lengths, self._gamma + 1)
        extra = keep - seen  # 0 or 1
        self.model.verify(padded[:, self._gamma], torch.ones_like(keep), 1)
        self.model.rollback(extra)
        self._lens = self._lens + keep

    def retain(self, index):
        self.model.retain(index)
        self._lens = self._lens[index]


# The name this drafter had when it only ran TinyCausalLM models.
TinyDrafter = ModelDrafter


class RandomDrafter:
    """Proposes tokens drawn uniformly from the vocabulary (``draft_logits`` all zero, so
    ``q`` is uniform at every temperature): mostly wrong, still exactly verifiable."""

    def __init__(self, vocab_size: int, device=None):
        self.vocab_size = vocab_size
        self.device = device

    def begin(self, tokens, lengths, hidden, capacity):
        pass

    def propose(self, anchor, temperature, seed, offset, gamma):
        R, V = anchor.shape[0], self.vocab_size
        logits = torch.zeros(R, gamma, V, device=anchor.device)
        noise = torch.stack([gumbel(random_bits(seed, offset, Purpose.DRAFT_SAMPLE, k, V)) for k in range(1, gamma + 1)], 1)
        return Proposal(noise.argmax(-1), logits, None)

    def commit(self, tokens, lengths, keep, hidden):
        pass

    def retain(self, index):
        pass


class AlwaysWrongDrafter:
    """Proposes ``-1`` everywhere (an id that is never accepted): every round emits exactly
    one target token. With ``FixedLength(0)`` it is plain autoregressive decoding."""

    def begin(self, tokens, lengths, hidden, capacity):
        pass

    def propose(self, anchor, temperature, seed, offset, gamma):
        return Proposal(torch.full((anchor.shape[0], gamma), -1, dtype=torch.int64, device=anchor.device))

    def commit(self, tokens, lengths, keep, hidden):
        pass

    def retain(self, index):
        pass


class DSparkProposer:
    """A :class:`~dspark_ops.speculative.dspark_drafter.DSparkDrafter` under the drafter protocol.

    The target's selected hidden layers (``hidden [N, m*d]``, the target built with the
    drafter's ``target_layer_ids``, DeepSpec's meaning: see
    :mod:`~dspark_ops.speculative.target_layers`) of every committed token
    go into the drafter's per-layer context cache (``append_context``: fc, hidden_norm,
    k/v projection, k_norm and RoPE at the token's position); ``propose`` runs one block draft
    (backbone, ``lm_head``, ``markov_draft``) and returns its tokens, the exact draft logits
    the tokens were sampled from, and the confidence head's scores. ``gamma`` may be smaller
    than the checkpoint's ``block_size``: the first ``gamma`` positions of a Markov draft do
    not depend on the later ones, so the block is simply cut. With ``num_candidates = K`` the
    Markov head runs pruned to the backbone's K best ids (``markov_draft_topk``) and the
    proposal carries ``draft_ids``.
    """

    def __init__(self, drafter: DSparkDrafter, conf_scale: Optional[torch.Tensor] = None,
                 num_candidates: Optional[int] = None):
        self.drafter = drafter
        self.conf_scale = conf_scale  # [block_size] STS scales, or None
        self.num_candidates = num_candidates  # K, or None for the dense head
        self.cache: Optional[DrafterCache] = None

    def _append(self, hidden: Optional[torch.Tensor], lengths: torch.Tensor, keep: torch.Tensor) -> None:
        if hidden is None:
            raise ValueError("DSparkProposer needs the target's hidden states: build the target with "
                             f"target_layer_ids = {self.drafter.config.target_layer_ids}")
        width = self.drafter.fc.in_features
        if hidden.shape[1] != width:
            raise ValueError(f"DSparkProposer: the target returns hidden states of width {hidden.shape[1]}, the drafter "
                             f"expects {width} (target_layer_ids = {self.drafter.config.target_layer_ids})")
        # Pad the first keep[r] entries of each request to [R, C, m*d] (one host sync for C).
        rows, cols = ragged_index(lengths, hidden.shape[0])
        width = max(int(keep.max()), 1) if keep.numel() else 1
        taken = cols < keep[rows]
        dtype = self.drafter.fc.weight.dtype
        padded = hidden.new_zeros((lengths.shape[0], width, hidden.shape[1]), dtype=dtype)
        padded[rows[taken], cols[taken]] = hidden[taken].to(dtype)
        self.drafter.append_context(self.cache, padded, keep)

    def begin(self, tokens, lengths, hidden, capacity):
        self.cache = self.drafter.new_cache(lengths.shape[0], capacity, device=lengths.device)
        self._append(hidden, lengths, lengths)

    def propose(self, anchor, temperature, seed, offset, gamma):
        if gamma > self.drafter.gamma:
            raise ValueError(f"DSparkProposer: gamma={gamma} exceeds the drafter's block_size {self.drafter.gamma}")
        out = self.drafter.draft(anchor, self.cache, temperature, seed, offset, self.conf_scale, self.num_candidates)
        ids = out.draft_ids[:, :gamma] if out.draft_ids is not None else None
        return Proposal(out.tokens[:, :gamma], out.draft_logits[:, :gamma], out.confidence[:, :gamma], ids)

    def commit(self, tokens, lengths, keep, hidden):
        self._append(hidden, lengths, keep)

    def retain(self, index):
        c = self.cache
        self.cache = DrafterCache(k=[k[index] for k in c.k], v=[v[index] for v in c.v], lens=c.lens[index])
