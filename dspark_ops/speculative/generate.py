"""The reference batched speculative ``generate`` loop (SPEC §1 and §8).

One round, for the A requests still running (all on the target's device):

1. ``drafter.propose`` drafts γ tokens after each anchor ``x_0``: tokens ``[A, γ]``,
   ``draft_logits [A, γ, V]`` (or None), confidence ``[A, γ]``;
2. a length policy picks ``ℓ_r ≤ min(γ, tokens left - 1)`` per request (:class:`FixedLength`,
   :class:`ConfidenceThreshold`, or :class:`SPSSchedule` = ``torch.ops.dspark.schedule_lengths``);
3. the target runs over the flattened batch ``[x_0, x_1 .. x_ℓ]`` of every request;
4. ``verify_chain`` accepts a prefix and emits one more token (lossless);
5. the target and drafter keep the anchor and accepted drafts (KV rollback of the rest), the
   emitted token becomes the next anchor, and requests that produced an EOS or reached
   ``max_new_tokens`` leave the batch.

The first generated token comes from the prefill logits through ``verify_chain`` with
``ℓ = 0`` (the target's own sample), so every generated token is the target's.

Randomness: request r uses ``seed[r]`` and ``offset = offset0[r] + stride * round`` (round
0 is the prefill's token), so no random number is ever reused and a request's output
depends only on its own prompt, temperature and seed, not on the rest of the batch.

Host syncs per round (a reference loop; an engine would pad to a fixed N and capture the
round in a CUDA graph): one to size the flattened verify batch (``N = Σ(ℓ + 1)``), and one
that copies the round's lengths / accepted / emitted counts and finished flags to the host
(statistics, and the batch shrinking when requests finish). The stage times are taken with
CUDA events on GPU (read after the second sync) and ``perf_counter`` on CPU.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence, Union

import torch

from ..ops.verify_chain import verify_chain
from .proposers import Drafter, Proposal
from .targets import Target, ragged_index

STAGES = ("draft", "schedule", "target", "verify", "update")

# ---------------------------------------------------------------------------------------
# Length policies: (confidence [A, γ] float32, max_lengths [A] int64) -> lengths [A] int64.


@dataclasses.dataclass
class FixedLength:
    """Verify ``length`` drafts per request (default: all γ), capped by ``max_lengths``."""

    length: Optional[int] = None

    def __call__(self, confidence: torch.Tensor, max_lengths: torch.Tensor) -> torch.Tensor:
        gamma = confidence.shape[1]
        n = gamma if self.length is None else min(self.length, gamma)
        return torch.clamp(max_lengths, max=n)


@dataclasses.dataclass
class ConfidenceThreshold:
    """Static threshold on the prefix survival ``a_j = Π_{i≤j} c_i`` (the paper's §4.3.3
    sweep): verify the longest prefix with ``a_j >= threshold``. ``threshold = 0`` is
    fixed-length verification."""

    threshold: float

    def __call__(self, confidence: torch.Tensor, max_lengths: torch.Tensor) -> torch.Tensor:
        survival = torch.cumprod(confidence.float(), 1)
        n = (survival >= self.threshold).long().cumprod(1).sum(1)
        return torch.minimum(n, max_lengths)


@dataclasses.dataclass
class SPSSchedule:
    """Load-aware lengths from an SPS table: ``torch.ops.dspark.schedule_lengths(confidence,
    sps, mode, budget, max_lengths)`` (SPEC §6). ``sps [S]`` float32 with
    ``S > A * (γ + 1)``. ``mode = 0`` (causal, Algorithm 1) is the lossless default; mode 1
    needs confidences computed before the round's drafts (see the op's docstring)."""

    sps: torch.Tensor
    mode: int = 0
    budget: int = -1

    def __call__(self, confidence: torch.Tensor, max_lengths: torch.Tensor) -> torch.Tensor:
        sps = self.sps.to(device=confidence.device, dtype=torch.float32)
        lengths, _, _, _ = torch.ops.dspark.schedule_lengths(confidence.float(), sps, self.mode, self.budget, max_lengths)
        return lengths


Schedule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------
# Results.


@dataclasses.dataclass
class RoundStats:
    """One round: the requests that took part (original indices), their scheduled lengths,
    accepted drafts, emitted tokens, and the seconds spent per stage (``STAGES``)."""

    requests: list[int]
    lengths: list[int]
    accepted: list[int]
    emitted: list[int]
    times: dict[str, float]

    def position_counts(self, gamma: int) -> tuple[list[int], list[int]]:
        """(tried[k-1], accepted[k-1]) for k = 1..γ: position k was verified when the first
        k-1 drafts were accepted and k ≤ ℓ; the ratio is the conditional acceptance."""
        tried, ok = [0] * gamma, [0] * gamma
        for l, a in zip(self.lengths, self.accepted):
            for k in range(min(a + 1, l)):
                tried[k] += 1
                ok[k] += k < a
        return tried, ok


@dataclasses.dataclass
class GenerateResult:
    """``tokens[r]``: request r's generated tokens (prompt excluded; ends with the EOS when it
    stopped on one); ``finish_reason[r]``: ``"eos"`` or ``"length"``; ``rounds``: per-round
    statistics; ``prefill_time``: seconds of the prefill (and first token)."""

    tokens: list[list[int]]
    finish_reason: list[str]
    rounds: list[RoundStats]
    gamma: int
    prefill_time: float = 0.0

    @property
    def num_rounds(self) -> int:
        return len(self.rounds)

    def accepted_lengths(self) -> list[float]:
        """Mean accepted drafts per request, per round."""
        return [sum(s.accepted) / max(len(s.accepted), 1) for s in self.rounds]

    def tokens_per_round(self) -> float:
        """Mean tokens emitted per request per round (accepted + 1, the usual τ)."""
        total = sum(sum(s.emitted) for s in self.rounds)
        return total / max(sum(len(s.emitted) for s in self.rounds), 1)

    def acceptance_by_position(self) -> list[float]:
        """Per draft position k = 1..γ: P(x_k accepted | x_1..x_{k-1} accepted and k ≤ ℓ),
        over all rounds and requests (NaN where position k was never verified). Each
        round's own counts are :meth:`RoundStats.position_counts`."""
        tried, ok = [0] * self.gamma, [0] * self.gamma
        for s in self.rounds:
            t, a = s.position_counts(self.gamma)
            tried = [x + y for x, y in zip(tried, t)]
            ok = [x + y for x, y in zip(ok, a)]
        return [o / t if t else float("nan") for o, t in zip(ok, tried)]

    def stage_times(self) -> dict[str, float]:
        """Total seconds per stage over all rounds, plus ``"prefill"``."""
        out = {"prefill": self.prefill_time}
        for name in STAGES:
            out[name] = sum(s.times.get(name, 0.0) for s in self.rounds)
        return out


class _StageTimer:
    """Times consecutive stages: CUDA events on GPU (no sync until ``read``), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def _now(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def start(self):
        self.marks = [("", self._now())]

    def mark(self, name: str):
        self.marks.append((name, self._now()))

    def read(self) -> dict[str, float]:
        out = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            out[name] = out.get(name, 0.0) + (a.elapsed_time(b) / 1e3 if self.cuda else b - a)
        return out


def _per_request(value, n: int, name: str) -> list:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"generate: {name} has {len(value)} entries for {n} prompts")
        return list(value)
    return [value] * n


# ---------------------------------------------------------------------------------------
# The loop.


@torch.no_grad()
def generate(
    target: Target,
    drafter: Drafter,
    prompts: Sequence[Union[Sequence[int], torch.Tensor]],
    *,
    max_new_tokens: Union[int, Sequence[int]] = 64,
    temperature: Union[float, Sequence[float]] = 0.0,
    seed: Union[int, Sequence[int]] = 0,
    offset: Union[int, Sequence[int]] = 0,
    eos_ids: Optional[Sequence[int]] = None,
    gamma: int = 4,
    schedule: Optional[Schedule] = None,
    offset_stride: int = 1,
) -> GenerateResult:
    """Batched speculative decoding of ``prompts`` with ``target`` and ``drafter``.

    Args:
        target: a :class:`dspark_ops.speculative.targets.Target` (``TinyCausalLM``, ``HFCausalLM``, ...).
        drafter: a :class:`dspark_ops.speculative.proposers.Drafter`.
        prompts: R token lists or 1-D tensors, each non-empty, of any lengths.
        max_new_tokens, temperature, seed, offset: one value for all, or one per request.
            ``temperature <= 1e-5`` is greedy. ``offset`` is the request's first counter;
            round i uses ``offset + i * offset_stride``.
        eos_ids: stop tokens (shared by the batch); a request stops right after the first
            one it generates, which is included in its output.
        gamma: the block size γ the drafter proposes per round.
        schedule: the length policy, a callable ``(confidence [A, γ], max_lengths [A]) ->
            lengths [A]``; default :class:`FixedLength` (all γ). ``max_lengths`` caps each
            request so that it never generates more than ``max_new_tokens``.

    Returns:
        :class:`GenerateResult`. With greedy requests the tokens equal the target's own
        greedy decoding token for token; with sampling, they follow the target's sampling
        distribution exactly, whatever the drafter proposes.
    """
    if gamma < 1:
        raise ValueError("generate: gamma must be >= 1")
    schedule = schedule or FixedLength()
    device = torch.device(target.device)
    R = len(prompts)
    prompts = [torch.as_tensor(p, dtype=torch.int64).reshape(-1) for p in prompts]
    if any(p.numel() == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    max_new = _per_request(max_new_tokens, R, "max_new_tokens")
    if R == 0:
        return GenerateResult([], [], [], gamma)

    timer = _StageTimer(device)
    timer.start()
    lengths_host = [p.numel() for p in prompts]
    prompt_lens = torch.tensor(lengths_host, dtype=torch.int64, device=device)
    flat_prompts = torch.cat(prompts).to(device)
    temp0 = torch.tensor(_per_request(temperature, R, "temperature"), dtype=torch.float32, device=device)
    seed0 = torch.tensor(_per_request(seed, R, "seed"), dtype=torch.int64, device=device)
    offset0 = torch.tensor(_per_request(offset, R, "offset"), dtype=torch.int64, device=device)
    max_new_t = torch.tensor(max_new, dtype=torch.int64, device=device)
    eos = torch.tensor(list(eos_ids or []), dtype=torch.int64, device=device)
    eos_arg = eos if eos.numel() else None
    width = max(max_new) + gamma + 1
    out_buf = torch.full((R, width), -1, dtype=torch.int64, device=device)

    capacity = max(lengths_host) + max(max_new) + gamma + 1
    pre = target.prefill(flat_prompts, prompt_lens, capacity)
    drafter.begin(flat_prompts, prompt_lens, pre.hidden, capacity)

    # The first token: the target's own sample from the last prompt position (ℓ = 0).
    no_drafts = torch.full((R, 1), -1, dtype=torch.int64, device=device)
    zeros = torch.zeros(R, dtype=torch.int64, device=device)
    first, _, _ = verify_chain(_verify_dtype(pre.logits), no_drafts, zeros, temp0, seed0, offset0, None, eos_arg)
    anchor = first[:, 0]
    generated = (max_new_t > 0).long()
    out_buf[:, 0] = torch.where(generated > 0, anchor, out_buf[:, 0])
    hit_eos = (generated > 0) & _is_eos(anchor, eos)
    # Host sync: which requests go on.
    done_host, eos_host = torch.stack([hit_eos | (generated >= max_new_t), hit_eos]).tolist()
    timer.mark("prefill")
    prefill_time = timer.read()["prefill"]

    # Per-request state, indexed by active row; `rid` maps rows to original requests.
    reason = ["eos" if e else "length" for e in eos_host]
    active = [i for i in range(R) if not done_host[i]]
    rid = torch.tensor(active, dtype=torch.int64, device=device)
    if active and len(active) < R:
        target.retain(rid)
        drafter.retain(rid)
    temp, seed_t, off0 = temp0[rid], seed0[rid], offset0[rid]
    anchor, generated, limit = anchor[rid], generated[rid], max_new_t[rid]

    rounds: list[RoundStats] = []
    round_index = 0
    steps = torch.arange(gamma + 1, device=device)
    while active:
        round_index += 1
        A = len(active)
        timer.start()
        off = off0 + round_index * offset_stride

        # 1. Draft.
        prop: Proposal = drafter.propose(anchor, temp, seed_t, off, gamma)
        _check_proposal(prop, A, gamma, target.vocab_size)
        draft_tokens = prop.tokens
        confidence = prop.confidence if prop.confidence is not None else torch.ones(A, gamma, device=device)
        timer.mark("draft")

        # 2. Lengths: never more than the tokens left after this round's emitted one.
        max_lengths = (limit - generated - 1).clamp(0, gamma)
        lengths = schedule(confidence, max_lengths).to(torch.int64)
        lengths = torch.minimum(lengths.clamp_min(0), max_lengths)
        verify_lens = lengths + 1
        # Host sync 1: the flattened verify batch's size.
        total = int(verify_lens.sum())
        timer.mark("schedule")

        # 3. Target over [x0, x_1..x_ℓ] per request, flattened.
        # Invalid drafts (-1) are never accepted: any in-range id may stand in for them.
        seq = torch.cat([anchor[:, None], draft_tokens.clamp(0, target.vocab_size - 1)], 1)
        rows, cols = ragged_index(verify_lens, total)
        flat = seq[rows, cols]
        tout = target.verify(flat, verify_lens, gamma + 1)
        timer.mark("target")

        # 4. Lossless verification.
        out_tokens, num_acc, num_emit = verify_chain(
            _verify_dtype(tout.logits), draft_tokens, lengths, temp, seed_t, off, prop.draft_logits, eos_arg
        )
        timer.mark("verify")

        # 5. Commit: keep x0 and the accepted drafts; the emitted token is the next anchor.
        keep = num_acc + 1
        target.rollback(keep)
        drafter.commit(flat, verify_lens, keep, tout.hidden)
        dest = generated[:, None] + steps  # out_buf columns of this round's tokens (< width)
        mine = out_buf[rid]
        mine.scatter_(1, dest, torch.where(steps[None] < num_emit[:, None], out_tokens, mine.gather(1, dest)))
        out_buf[rid] = mine
        generated = generated + num_emit
        last = out_tokens.gather(1, (num_emit - 1).clamp_min(0)[:, None]).squeeze(1)
        hit_eos = (num_emit < num_acc + 1) | _is_eos(last, eos)
        done = hit_eos | (generated >= limit)
        anchor = last
        # Host sync 2: statistics and the finished flags.
        stats = torch.stack([lengths, num_acc, num_emit, done.long(), hit_eos.long()]).tolist()
        timer.mark("update")
        rounds.append(RoundStats(list(active), stats[0], stats[1], stats[2], timer.read()))

        if any(stats[3]):
            keep_rows = [j for j in range(A) if not stats[3][j]]
            for j in range(A):
                if stats[3][j]:
                    reason[active[j]] = "eos" if stats[4][j] else "length"
            active = [active[j] for j in keep_rows]
            if not active:
                break
            index = torch.tensor(keep_rows, dtype=torch.int64, device=device)
            target.retain(index)
            drafter.retain(index)
            rid, temp, seed_t, off0 = rid[index], temp[index], seed_t[index], off0[index]
            anchor, generated, limit = anchor[index], generated[index], limit[index]

    counts = (out_buf >= 0).sum(1).tolist()
    buf = out_buf.tolist()
    tokens = [buf[i][: counts[i]] for i in range(R)]
    return GenerateResult(tokens, reason, rounds, gamma, prefill_time)


def _check_proposal(prop: Proposal, rows: int, gamma: int, vocab: int) -> None:
    """Shapes only (no host sync): a drafter bug should fail here, by name."""
    if tuple(prop.tokens.shape) != (rows, gamma) or prop.tokens.dtype != torch.int64:
        raise RuntimeError(f"generate: drafter proposed tokens {tuple(prop.tokens.shape)} {prop.tokens.dtype}, expected ({rows}, {gamma}) int64")
    if prop.draft_logits is not None and tuple(prop.draft_logits.shape) != (rows, gamma, vocab):
        raise RuntimeError(f"generate: drafter draft_logits {tuple(prop.draft_logits.shape)}, expected ({rows}, {gamma}, {vocab})")
    if prop.confidence is not None and tuple(prop.confidence.shape) != (rows, gamma):
        raise RuntimeError(f"generate: drafter confidence {tuple(prop.confidence.shape)}, expected ({rows}, {gamma})")


def _verify_dtype(logits: torch.Tensor) -> torch.Tensor:
    """verify_chain reads float32/bf16/fp16 logits; wider ones are rounded to float32."""
    return logits if logits.dtype in (torch.float32, torch.bfloat16, torch.float16) else logits.float()


def _is_eos(tokens: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    if eos.numel() == 0:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return (tokens[:, None] == eos[None]).any(1)


def target_decode(target: Target, prompts, **kwargs) -> GenerateResult:
    """Plain autoregressive decoding with the same loop (no drafts, ``ℓ = 0`` every round):
    the baseline that speculative decoding must match and beat."""
    from .proposers import AlwaysWrongDrafter

    kwargs = dict(kwargs)
    kwargs["gamma"] = 1
    kwargs["schedule"] = FixedLength(0)
    return generate(target, AlwaysWrongDrafter(), prompts, **kwargs)
