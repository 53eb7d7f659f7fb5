"""When a draft pays: the cost rule of `--spec auto` (worker/backend/speculative.py).

A decode step of n positions, each with a row of logits, costs c(n). Plain decoding of B
sequences yields B tokens for c(B). A draft of k tokens after one sequence's token adds k
positions and is worth the tokens it gets accepted: with a per-token acceptance p (each
draft token is taken only if the ones before it were), E(k) = p + p^2 + ... + p^k. A step
goes on being worth more while (tokens + E) / c(n + k) beats tokens / c(n): expected tokens
per second of the whole batch. While a step is memory-bound (few positions: the weights are
read once whatever their number) extra positions are cheap and drafts pay; once it is
compute-bound c grows linearly, c(n + k) / c(n) ~ 1 + k / n, and no draft with E < k pays.

c is measured: every step that decodes only generating sequences (no prompt chunk) is timed,
its llama_decode and the sampling of every position with logits, per position count. Counts
never seen are estimated from the nearest ones seen, in the shape of the default model's curve
(Gemma 3 270M on 2 CPU cores, llama_decode alone: 15, 27, 40, 65, 119, 242, 432 ms for 1, 2,
4, 8, 16, 32, 64 positions in one ubatch: one position's row of 262,144 logits is most of a
step, and past two positions each more costs 6-7 ms).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# The default model's step cost in ms per position count (medians of 7 decodes after a
# 200-token prompt; of one sequence's positions or of 4 or 16 sequences with as many each,
# the dearer: 16 sequences of 2 take 242 ms where one of 32 takes 201); only its shape matters
# once steps are timed: the rule compares costs with each other.
PRIOR_MS: dict[int, float] = {
    1: 15.0,
    2: 27.0,
    4: 40.0,
    8: 65.0,
    16: 119.0,
    32: 242.0,
    64: 432.0,
}
# A step's timings vary with the machine's load: each new one moves the estimate by this.
EMA_WEIGHT = 0.2
# A draft is taken only if it raises the step's expected tokens per second by this much:
# the estimates are noisy, and a draft that only breaks even is not worth the risk.
MARGIN = 0.03
# How much longer a sequence may wait for other sequences' drafts, as a share of the time its
# steps would take without them (and a drafting one: how much more the step may slow down than
# its draft yields): about the spread of a step's time on a busy machine. Without this a
# copying sequence would buy its speed with its neighbours' time.
SLACK = 0.10
# Positions added to the drafts without a better rate before the search for lengths stops.
PATIENCE = 24


class StepCost:
    """c(n): the time of a decode step with n positions with logits, as measured so far."""

    def __init__(self, prior: dict[int, float] | None = None) -> None:
        self._prior = sorted((prior or PRIOR_MS).items())
        self._seen: dict[int, float] = {}
        self._keys: list[int] = []  # sorted keys of _seen

    def observe(self, n: int, seconds: float) -> None:
        if n < 1 or seconds <= 0:
            return
        ms = seconds * 1000.0
        old = self._seen.get(n)
        if old is None:
            bisect.insort(self._keys, n)
            self._seen[n] = ms
        else:
            self._seen[n] = old + EMA_WEIGHT * (ms - old)

    def prior(self, n: int) -> float:
        """The prior curve, piecewise linear through its points and beyond the last one."""
        points = self._prior
        if n <= points[0][0]:
            return points[0][1] * n / points[0][0]
        for (n0, c0), (n1, c1) in itertools.pairwise(points):
            if n <= n1:
                return c0 + (c1 - c0) * (n - n0) / (n1 - n0)
        (n0, c0), (n1, c1) = points[-2], points[-1]
        return c1 + (c1 - c0) * (n - n1) / (n1 - n0)

    def __call__(self, n: int) -> float:
        """Measured where seen, interpolated between seen counts, and scaled from the nearest
        one by the prior's shape outside them; never below a smaller count's cost (timing
        noise must not make extra positions look free)."""
        keys = self._keys
        if not keys:
            return self.prior(n)
        i = bisect.bisect_left(keys, n)
        if i < len(keys) and keys[i] == n:
            estimate = self._seen[n]
        elif 0 < i < len(keys):
            n0, n1 = keys[i - 1], keys[i]
            c0, c1 = self._seen[n0], self._seen[n1]
            estimate = c0 + (c1 - c0) * (n - n0) / (n1 - n0)
        else:
            near = keys[0] if i == 0 else keys[-1]
            estimate = self._seen[near] * self.prior(n) / self.prior(near)
        below = max((self._seen[k] for k in keys[:i]), default=0.0)
        return max(estimate, below)


@dataclass
class Acceptance:
    """A sequence's recent per-token draft acceptance: taken and missed draft tokens, older
    drafts weighing less (DECAY per draft), over a prior of PRIOR_TAKEN : PRIOR_MISSED."""

    # Before any draft: a 12-token match in the sequence's own history mostly goes on as it
    # did (bench/spec.py: 9 in 10 draft tokens taken on rewriting).
    PRIOR_TAKEN = 4.5
    PRIOR_MISSED = 0.5
    DECAY = 0.8  # per verified draft: the last few drafts decide
    IDLE_DECAY = 0.9  # per draft held back: back towards the prior, so drafting can resume

    taken: float = 0.0
    missed: float = 0.0

    @property
    def p(self) -> float:
        taken = self.taken + self.PRIOR_TAKEN
        return taken / (taken + self.missed + self.PRIOR_MISSED)

    def verified(self, drafted: int, taken: int) -> None:
        self.taken = self.DECAY * self.taken + taken
        self.missed = self.DECAY * self.missed + (1 if taken < drafted else 0)

    def held_back(self) -> None:
        self.taken *= self.IDLE_DECAY
        self.missed *= self.IDLE_DECAY


@dataclass
class Wait:
    """A sequence's account of waiting for its neighbours' drafts: `elapsed`, what its steps
    would have taken without any draft (ms); `lost`, what the drafts beside it added to them.
    It may wait longer by SLACK of its time, and by what its own drafts saved it (a sequence
    that drafts in turn with the others gains more than it waits): so a draft that slows one
    step a lot is let through now and then, where a bound per step would never allow it, and
    over a request the wait stays within the bound."""

    elapsed: float = 0.0
    lost: float = 0.0

    def budget(self, step_ms: float, saved_ms: float) -> float:
        """The extra time (ms) this step may add for it: `step_ms` the step without drafts,
        `saved_ms` what its own drafts saved it so far."""
        return SLACK * (self.elapsed + step_ms) + max(0.0, saved_ms) - self.lost


def expected_taken(p: float, k: int) -> float:
    """E(k) = p + p^2 + ... + p^k: draft tokens taken, each only after all before it."""
    if p >= 1.0:
        return float(k)
    return p * (1.0 - p**k) / (1.0 - p)


def ubatch_sizes(counts: Sequence[tuple[int, int]]) -> list[int]:
    """How llama.cpp splits a step with a KV stream per sequence (`kv_unified` off, as the
    worker runs it): `counts` is (sequence id, tokens) in batch order; each ubatch takes a run
    of sequences whose ids follow each other by one, and from each as many tokens as the one
    with fewest has left (src/llama-batch.cpp, split_equal with `sequential`). Each ubatch is
    a graph computation of its own, which reads every weight again: so a draft of k tokens
    beside sequences with one costs c(n) + c(k), not c(n + k), and a step whose sequences'
    ids have a gap costs one computation per run."""
    left = [[seq_id, n] for seq_id, n in counts if n > 0]
    sizes: list[int] = []
    while left:
        run = [left[0]]
        for item in left[1:]:
            if item[0] == run[-1][0] + 1:
                run.append(item)
        per = min(n for _, n in run)
        sizes.append(per * len(run))
        for item in run:
            item[1] -= per
        left = [item for item in left if item[1] > 0]
    return sizes


def step_cost(cost: Callable[[int], float], counts: Sequence[tuple[int, int]]) -> float:
    """A step's cost as llama.cpp runs it: each of its ubatches (ubatch_sizes) at c."""
    return sum(cost(n) for n in ubatch_sizes(counts))


def plan(
    cost: Callable[[int], float],
    base: int,
    candidates: Sequence[tuple[float, int]],
    expected: float | None = None,
    bystanders: Sequence[float] = (),
    budgets: Sequence[float] | None = None,
    layout: Sequence[tuple[int, int]] | None = None,
    at: Sequence[int] = (),
) -> list[int]:
    """How many tokens of each candidate draft to verify this step (0: none).

    `base`: the positions the step has without these drafts (one per generating sequence and
    any draft that is not up to the rule); `expected`: the tokens those yield (default
    `base`); `candidates`: (acceptance p, the draft's length) per sequence; `bystanders`: for
    each generating sequence that is not a candidate, the extra time (ms) it may wait in this
    step (Wait.budget); `budgets`: the same for each candidate, should its draft go (default
    SLACK of the step). The most likely drafts go first; each gets the length that most
    raises the step's expected tokens per second, by at least MARGIN, or none. Then no
    sequence may lose: while a drafting sequence would get fewer tokens than the step slows
    down (by SLACK), its draft goes; while the drafts add more time than a sequence without
    one may wait, the least likely draft goes (the last one left is shortened instead); what
    is left must still pay. `layout`: (sequence id, tokens) of every generating sequence in
    batch order without these drafts, and `at` each candidate's place in it: the step is then
    priced as the ubatches llama.cpp splits it into (ubatch_sizes), each at c; without it, as
    one ubatch of all positions."""
    memo: dict[int, float] = {}

    def c(m: int) -> float:
        if m not in memo:
            memo[m] = cost(m)
        return memo[m]

    def step(lengths: Sequence[int]) -> float:
        if layout is None:
            return c(base + sum(lengths))
        counts = [list(item) for item in layout]
        for i, k in zip(at, lengths, strict=True):
            counts[i][1] += k
        return step_cost(c, [(seq_id, n) for seq_id, n in counts])

    lengths = _fastest(step, base, candidates, expected)
    plain = step([0] * len(candidates))
    own = list(budgets) if budgets is not None else [SLACK * plain] * len(candidates)
    while any(lengths):
        drafting = [i for i, k in enumerate(lengths) if k]
        slower = step(lengths) / plain
        idle = [*bystanders, *(own[i] for i, k in enumerate(lengths) if not k)]
        gains = {i: 1.0 + expected_taken(candidates[i][0], lengths[i]) for i in drafting}
        worst = min(drafting, key=lambda i: gains[i])
        if gains[worst] * (1.0 + SLACK) < slower:  # it would wait longer per token
            lengths[worst] = 0
        elif idle and (slower - 1.0) * plain > min(idle):  # one without a draft would
            least = min(drafting, key=lambda i: candidates[i][0])
            if len(drafting) > 1:
                lengths[least] = 0
            else:
                lengths[least] -= 1
        else:
            break
    tokens = float(base if expected is None else expected)
    gain = sum(expected_taken(p, k) for (p, _), k in zip(candidates, lengths, strict=True))
    if (tokens + gain) / step(lengths) < tokens / plain * (1.0 + MARGIN):
        return [0] * len(candidates)  # what is left of the drafts no longer pays
    return lengths


def _fastest(
    step: Callable[[Sequence[int]], float],
    base: int,
    candidates: Sequence[tuple[float, int]],
    expected: float | None,
) -> list[int]:
    """The draft lengths that most raise the step's expected tokens per second: one position
    at a time, always the one worth most (the next token of candidate i is taken with
    probability p_i^(k_i + 1)), and among equals the shortest draft's, so that drafts of
    sequences alike grow side by side rather than one long draft making the others wait;
    the best rate seen along the way wins (by at least MARGIN over no draft). Past PATIENCE
    positions without a better rate it stops: c grows about linearly there and each next
    position is worth less."""
    tokens = float(base if expected is None else expected)
    lengths = [0] * len(candidates)
    best, best_rate = list(lengths), (tokens / step(lengths) if base else 0.0) * (1.0 + MARGIN)
    heap = [(-p, 0, i) for i, (p, longest) in enumerate(candidates) if longest > 0 and p > 0]
    heapq.heapify(heap)
    since = 0
    while heap and since < PATIENCE:
        worth, k, i = heapq.heappop(heap)
        lengths[i] = k + 1
        tokens -= worth
        p, longest = candidates[i]
        if k + 1 < longest:
            heapq.heappush(heap, (worth * p, k + 1, i))
        rate = tokens / step(lengths)
        if rate > best_rate:
            best, best_rate, since = list(lengths), rate, 0
        else:
            since += 1
    return best
