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
from .observe import ProgressBar
from .proposers import Drafter, Proposal
from .targets import Target, ragged_index

STAGES = ("draft", "schedule", "target", "verify", "update")
PROGRESS_MIN_TOKENS = 4096  # generate shows a progress bar by default from this many tokens

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
    """A static confidence threshold; ``threshold = 0`` is fixed-length verification.

    ``rule = "per_position"`` (the default) is DeepSpec's evaluator rule: verify the drafts
    before the first position whose *own* confidence ``c_k`` is below the threshold. It is
    the default because it is the rule DeepSpec's threshold sweeps (and the thresholds
    published with its checkpoints) were measured with, so they reproduce here.
    ``rule = "survival"`` thresholds the prefix survival ``a_j = Π_{i≤j} c_i`` instead
    (verify the longest prefix with ``a_j >= threshold``): the estimated probability that
    the whole prefix is accepted, stricter for long prefixes. For
    ``c = [.95, .9, .85, .9, .3]`` at 0.8, ``per_position`` verifies 4 drafts and
    ``survival`` 2.
    """

    threshold: float
    rule: str = "per_position"

    def __post_init__(self):
        if self.rule not in ("per_position", "survival"):
            raise ValueError(f"ConfidenceThreshold: rule must be 'per_position' or 'survival', got {self.rule!r}")

    def __call__(self, confidence: torch.Tensor, max_lengths: torch.Tensor) -> torch.Tensor:
        c = confidence.float()
        score = c if self.rule == "per_position" else torch.cumprod(c, 1)
        n = (score >= self.threshold).long().cumprod(1).sum(1)
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

    def survival_by_position(self) -> list[float]:
        """Per draft position k = 1..γ: the fraction of request-rounds that verified at least
        k drafts in which x_1..x_k were all accepted (the empirical survival ``a_k``; NaN
        where no round verified k drafts)."""
        tried, ok = [0] * self.gamma, [0] * self.gamma
        for s in self.rounds:
            for l, a in zip(s.lengths, s.accepted):
                for k in range(l):
                    tried[k] += 1
                    ok[k] += k < a
        return [o / t if t else float("nan") for o, t in zip(ok, tried)]

    def plot_acceptance(self, ax=None, path: Optional[str] = None):
        """Per-position acceptance and survival plot (needs matplotlib); see
        :func:`dspark_ops.speculative.observe.plot_acceptance`."""
        from .observe import plot_acceptance

        return plot_acceptance(self, ax, path)

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


@dataclasses.dataclass
class _Active:
    """Per-request state of the requests still running, one row each, in the target's and
    drafter's row order: every tensor is indexed by active row, and :meth:`keep` re-indexes
    them all at once when requests finish (the one place that does)."""

    requests: list[int]  # original request index of each row
    temperature: torch.Tensor  # [A] float32
    seed: torch.Tensor  # [A] int64
    offset0: torch.Tensor  # [A] int64, the request's first counter
    anchor: torch.Tensor  # [A] int64, the last emitted token (not yet seen by the target)
    generated: torch.Tensor  # [A] int64, tokens emitted so far
    limit: torch.Tensor  # [A] int64, max_new_tokens

    @property
    def rid(self) -> torch.Tensor:
        """``[A]`` original request indices (rows of the output buffer)."""
        return torch.tensor(self.requests, dtype=torch.int64, device=self.anchor.device)

    def keep(self, rows: list[int]) -> "_Active":
        index = torch.tensor(rows, dtype=torch.int64, device=self.anchor.device)
        tensors = {f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self) if f.name != "requests"}
        return _Active([self.requests[j] for j in rows], **tensors)


@dataclasses.dataclass
class _Setup:
    """The validated inputs of one ``generate`` call, on the target's device."""

    prompts: torch.Tensor  # [N] flattened prompts
    prompt_lens: torch.Tensor  # [R]
    temperature: torch.Tensor  # [R] float32
    seed: torch.Tensor  # [R] int64
    offset: torch.Tensor  # [R] int64
    max_new: torch.Tensor  # [R] int64
    eos: torch.Tensor  # [E] int64
    capacity: int  # positions any request can reach: prompt + generated + one block
    width: int  # output buffer columns


def _setup(prompts, max_new_tokens, temperature, seed, offset, eos_ids, gamma, device) -> _Setup:
    R = len(prompts)
    prompts = [torch.as_tensor(p, dtype=torch.int64).reshape(-1) for p in prompts]
    if any(p.numel() == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    max_new = _per_request(max_new_tokens, R, "max_new_tokens")
    lengths = [p.numel() for p in prompts]

    def vec(values, dtype):
        return torch.tensor(values, dtype=dtype, device=device)

    return _Setup(
        prompts=torch.cat(prompts).to(device),
        prompt_lens=vec(lengths, torch.int64),
        temperature=vec(_per_request(temperature, R, "temperature"), torch.float32),
        seed=vec(_per_request(seed, R, "seed"), torch.int64),
        offset=vec(_per_request(offset, R, "offset"), torch.int64),
        max_new=vec(max_new, torch.int64),
        eos=vec(list(eos_ids or []), torch.int64),
        capacity=max(lengths) + max(max_new) + gamma + 1,
        width=max(max_new) + gamma + 1,
    )


def _first_token(setup: _Setup, logits: torch.Tensor, out_buf: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """The target's own sample from the last prompt position (``ℓ = 0``), written to column 0.
    Returns the tokens ``[R]`` and, read on the host, which requests are done / hit an EOS."""
    R = setup.prompt_lens.shape[0]
    no_drafts = torch.full((R, 1), -1, dtype=torch.int64, device=logits.device)
    zeros = torch.zeros(R, dtype=torch.int64, device=logits.device)
    first, _, _ = verify_chain(_verify_dtype(logits), no_drafts, zeros, setup.temperature, setup.seed, setup.offset,
                               None, setup.eos if setup.eos.numel() else None)
    token = first[:, 0]
    emitted = setup.max_new > 0
    out_buf[:, 0] = torch.where(emitted, token, out_buf[:, 0])
    hit_eos = emitted & _is_eos(token, setup.eos)
    done, eos = torch.stack([hit_eos | (setup.max_new <= 1), hit_eos]).tolist()  # host sync
    return token, done, eos


def _round(target: Target, drafter: Drafter, state: _Active, schedule: Schedule, gamma: int, offset_stride: int,
           round_index: int, eos: torch.Tensor, out_buf: torch.Tensor, timer: "_StageTimer") -> tuple[_Active, list]:
    """One speculative round for every active request (steps 1-5 of the module docstring).
    Returns the advanced state and, read on the host, ``[lengths, accepted, emitted, done,
    hit_eos]`` per row."""
    A = len(state.requests)
    device = state.anchor.device
    timer.start()
    off = state.offset0 + round_index * offset_stride

    # 1. Draft.
    prop: Proposal = drafter.propose(state.anchor, state.temperature, state.seed, off, gamma)
    _check_proposal(prop, A, gamma, target.vocab_size)
    confidence = prop.confidence if prop.confidence is not None else torch.ones(A, gamma, device=device)
    timer.mark("draft")

    # 2. Lengths: never more than the tokens left after this round's emitted one.
    max_lengths = (state.limit - state.generated - 1).clamp(0, gamma)
    lengths = torch.minimum(schedule(confidence, max_lengths).to(torch.int64).clamp_min(0), max_lengths)
    verify_lens = lengths + 1
    total = int(verify_lens.sum())  # host sync 1: the flattened verify batch's size
    timer.mark("schedule")

    # 3. Target over [x0, x_1..x_ℓ] per request, flattened. Invalid drafts (-1) are never
    # accepted: any in-range id may stand in for them.
    seq = torch.cat([state.anchor[:, None], prop.tokens.clamp(0, target.vocab_size - 1)], 1)
    rows, cols = ragged_index(verify_lens, total)
    flat = seq[rows, cols]
    tout = target.verify(flat, verify_lens, gamma + 1)
    timer.mark("target")

    # 4. Lossless verification; a pruned draft (draft_ids) against its sparse q (SPEC §10).
    out_tokens, num_acc, num_emit = verify_chain(_verify_dtype(tout.logits), prop.tokens, lengths, state.temperature,
                                                 state.seed, off, prop.draft_logits, eos if eos.numel() else None,
                                                 draft_ids=prop.draft_ids)
    timer.mark("verify")

    # 5. Commit: keep x0 and the accepted drafts; the emitted token is the next anchor.
    keep = num_acc + 1
    target.rollback(keep)
    drafter.commit(flat, verify_lens, keep, tout.hidden)
    steps = torch.arange(gamma + 1, device=device)
    dest = state.generated[:, None] + steps  # out_buf columns of this round's tokens (< width)
    rid = state.rid
    mine = out_buf[rid]
    mine.scatter_(1, dest, torch.where(steps[None] < num_emit[:, None], out_tokens, mine.gather(1, dest)))
    out_buf[rid] = mine
    state.generated = state.generated + num_emit
    state.anchor = out_tokens.gather(1, (num_emit - 1).clamp_min(0)[:, None]).squeeze(1)
    hit_eos = (num_emit < num_acc + 1) | _is_eos(state.anchor, eos)
    done = hit_eos | (state.generated >= state.limit)
    stats = torch.stack([lengths, num_acc, num_emit, done.long(), hit_eos.long()]).tolist()  # host sync 2
    timer.mark("update")
    return state, stats


def _retire(target: Target, drafter: Drafter, state: _Active, done: list, eos: list, reason: list) -> _Active:
    """Drop the finished rows from the target, the drafter and the state; record why."""
    if not any(done):
        return state
    for j, r in enumerate(state.requests):
        if done[j]:
            reason[r] = "eos" if eos[j] else "length"
    rows = [j for j in range(len(done)) if not done[j]]
    if rows:
        index = torch.tensor(rows, dtype=torch.int64, device=state.anchor.device)
        target.retain(index)
        drafter.retain(index)
    return state.keep(rows)


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
    progress: Optional[bool] = None,
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
        progress: a tqdm bar over the generated tokens. None (default): shown for long runs
            (at least ``PROGRESS_MIN_TOKENS`` tokens in all) on a terminal when tqdm is
            installed; True / False force it.

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
    if R == 0:
        return GenerateResult([], [], [], gamma)
    setup = _setup(prompts, max_new_tokens, temperature, seed, offset, eos_ids, gamma, device)

    timer = _StageTimer(device)
    timer.start()
    out_buf = torch.full((R, setup.width), -1, dtype=torch.int64, device=device)
    pre = target.prefill(setup.prompts, setup.prompt_lens, setup.capacity)
    drafter.begin(setup.prompts, setup.prompt_lens, pre.hidden, setup.capacity)
    anchor, done, eos = _first_token(setup, pre.logits, out_buf)
    timer.mark("prefill")
    prefill_time = timer.read()["prefill"]

    reason = ["eos" if e else "length" for e in eos]
    state = _Active(list(range(R)), setup.temperature, setup.seed, setup.offset, anchor,
                    (setup.max_new > 0).long(), setup.max_new)
    state = _retire(target, drafter, state, done, eos, reason)
    total = int(setup.max_new.sum())
    show = progress if progress is not None else (None if total >= PROGRESS_MIN_TOKENS else False)
    rounds: list[RoundStats] = []
    with ProgressBar(total, "generate", "tok", show) as bar:
        bar.update(int((setup.max_new > 0).sum()))  # the first tokens
        while state.requests:
            requests = list(state.requests)
            state, stats = _round(target, drafter, state, schedule, gamma, offset_stride, len(rounds) + 1,
                                  setup.eos, out_buf, timer)
            rounds.append(RoundStats(requests, stats[0], stats[1], stats[2], timer.read()))
            bar.update(sum(stats[2]), tau=f"{sum(stats[2]) / len(requests):.2f}")
            state = _retire(target, drafter, state, stats[3], stats[4], reason)

    counts = (out_buf >= 0).sum(1).tolist()
    buf = out_buf.tolist()
    tokens = [buf[i][: counts[i]] for i in range(R)]
    return GenerateResult(tokens, reason, rounds, gamma, prefill_time)


def _check_proposal(prop: Proposal, rows: int, gamma: int, vocab: int) -> None:
    """Shapes only (no host sync): a drafter bug should fail here, by name."""
    if tuple(prop.tokens.shape) != (rows, gamma) or prop.tokens.dtype != torch.int64:
        raise RuntimeError(f"generate: drafter proposed tokens {tuple(prop.tokens.shape)} {prop.tokens.dtype}, expected ({rows}, {gamma}) int64")
    entries = vocab
    if prop.draft_ids is not None:
        entries = prop.draft_ids.shape[-1]
        if prop.draft_ids.dim() != 3 or tuple(prop.draft_ids.shape[:2]) != (rows, gamma) or prop.draft_logits is None:
            raise RuntimeError(f"generate: drafter draft_ids {tuple(prop.draft_ids.shape)}, expected ({rows}, {gamma}, K) "
                               "with draft_logits")
    if prop.draft_logits is not None and tuple(prop.draft_logits.shape) != (rows, gamma, entries):
        raise RuntimeError(f"generate: drafter draft_logits {tuple(prop.draft_logits.shape)}, expected ({rows}, {gamma}, {entries})")
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
