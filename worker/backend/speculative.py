"""Speculative decoding inside the continuous batch.

A sequence that speculates puts a draft (worker/backend/drafters.py) after its last sampled
token in the step's batch, next to the other sequences' tokens, with logits for each
position. Its sampler chain then samples position after position and keeps going while what
it samples equals the draft; the first token that differs is kept (it is what the chain
sampled), and the KV cells of the draft after it are removed. Every emitted token is one the
chain sampled from the model's logits given the tokens before it, so the output follows the
model's own distribution (greedy: its argmax path) and the chain accepts each token once
(llama_sampler_sample accepts what it returns), exactly as without speculation. A token that a
reasoning budget forces (batch.py) takes the sampled one's place at its position, so a draft
is taken only as far as it equals the forced tokens too. A grammar is part of the chain: it
has accepted exactly the tokens before each position when that position is sampled, and a
draft token it refuses is simply not sampled there.

Under `--spec auto` the requests that do not say whether to speculate draft only where the
cost rule of spec_cost.py expects the step to yield more tokens per second with the draft
than without: each sequence's recent acceptance against the measured cost of the positions.
"""

from __future__ import annotations

from collections.abc import Callable

import llama_cpp as ll

from llorch.worker.backend.drafters import Drafter, NgramDrafter, Want
from llorch.worker.backend.protocol import LoraKey, SpecOptions, position
from llorch.worker.backend.slots import SeqState, Slot
from llorch.worker.backend.spec_cost import (
    Acceptance,
    StepCost,
    Wait,
    expected_taken,
    plan,
    step_cost,
    ubatch_sizes,
)


class Speculation:
    """Who speculates, their drafts for each step, and the verification after the decode."""

    def __init__(
        self, ctx: ll.llama_context_p, options: SpecOptions, drafter: Drafter | None = None
    ) -> None:
        self._ctx = ctx
        self._options = options
        # A recurrent state (Mamba, hybrids) cannot drop a rejected draft: llama.cpp refuses
        # to remove the tail of such a sequence, so these models never speculate.
        model = ll.llama_get_model(ctx)
        self._can_drop_tail = not (
            ll.llama_model_is_recurrent(model) or ll.llama_model_is_hybrid(model)
        )
        self._drafter = drafter or NgramDrafter(
            options.ngram, options.ngram, options.ngram_draft_min
        )
        self.cost = StepCost()
        # Per slot of a speculating sequence: its acceptance, whether the cost rule decides
        # for it (auto, and the request did not say), and its estimated time saved (ms).
        self._acceptance: dict[int, Acceptance] = {}
        self._gated: set[int] = set()
        self._saved_ms: dict[int, float] = {}
        # Per slot of every generating sequence (speculating or not): its wait for the others'
        # drafts.
        self._waits: dict[int, Wait] = {}
        # The last decode: positions with logits; its cost with and without its drafts (ms,
        # priced as llama.cpp splits it); and whether its time goes into the cost model.
        self._n_logits = 0
        self._step_ms = self._plain_ms = 0.0
        self._timed = False

    def decide(self, slot: Slot) -> None:
        """Speculation where it keeps the output exactly as without it and simple: not with
        log-probabilities or echo (scored one position per step), or a chain sampled inside
        the graph (one sampled token per sequence and decode), nor where a rejected draft
        cannot be removed."""
        seq = slot.seq
        assert seq is not None
        request = seq.request
        wanted = self._options.default if request.speculative is None else request.speculative
        seq.spec.on = (
            wanted
            and request.logprobs is None
            and not request.echo
            and not seq.in_graph
            and self._can_drop_tail
        )
        self._acceptance[slot.seq_id] = Acceptance()
        self._saved_ms[slot.seq_id] = 0.0
        self._waits[slot.seq_id] = Wait()
        self._gated.discard(slot.seq_id)
        if seq.spec.on:
            adaptive = self._drafter.adaptive
            seq.spec.max_len = (
                self._options.draft_max if adaptive else self._options.ngram_draft_max
            )
            if self._options.auto and request.speculative is None and not adaptive:
                self._gated.add(slot.seq_id)
            self._drafter.reset(slot.seq_id)

    def saved_ms(self, slot: Slot) -> float:
        """The estimated decode time speculation saved the slot's sequence so far (ms;
        negative: lost): each verified draft's tokens taken times the cost of a step without
        drafts, less what the drafts added to that step (spec_cost.StepCost)."""
        return self._saved_ms.get(slot.seq_id, 0.0)

    def propose(self, slots: list[Slot], group: LoraKey) -> None:
        """Drafts for the sequences that speculate in this step's adapter group: each at most
        what is left of its max_tokens after the token its verification adds; those the cost
        rule decides for cut to the length it allows (none at all in a compute-bound step, nor
        in a step that reads a prompt: see below)."""
        wants: list[Want] = []
        seqs: list[tuple[int, SeqState]] = []
        generating = 0
        waiting: list[int] = []  # the generating sequences' slots
        reading = False  # a prompt of this group waits: its next chunk fills this step
        for slot in slots:
            seq = slot.seq
            if seq is not None and seq.request.lora == group and seq.to_ingest:
                reading = True
            if seq is None or seq.next_token is None or seq.request.lora != group:
                continue
            generating += 1
            waiting.append(slot.seq_id)
            if not seq.spec.on:
                continue
            if seq.spec.pause > 0:
                seq.spec.pause -= 1
                continue
            room = min(seq.request.max_tokens - seq.output.n_out - 1, seq.spec.max_len)
            if room > 0:
                wants.append((slot.seq_id, [*slot.cached, seq.next_token], room))
                seqs.append((slot.seq_id, seq))
        if not wants:
            return
        drafts = self._drafter.propose(wants)
        base, expected = generating, float(generating)
        gated: list[tuple[int, SeqState, list[int]]] = []
        with_draft: set[int] = set()
        for (seq_id, seq), draft in zip(seqs, drafts, strict=True):
            if seq_id in self._gated and draft:
                gated.append((seq_id, seq, draft))
                with_draft.add(seq_id)
            elif draft:  # asked for, or a draft model's (adaptive): drafts regardless
                seq.spec.proposed = draft
                base += len(draft)
                expected += expected_taken(self._acceptance[seq_id].p, len(draft))
                with_draft.add(seq_id)
        if gated and reading:
            # A step that reads a prompt chunk is compute-bound by its prompt tokens, which
            # the cost model (timed on steps without one) does not see: a draft there would
            # look as cheap as in a step of a few positions, cost as much as prompt tokens,
            # and take their place in the batch, so every waiting prompt starts later (a
            # 16-stream run lost 15 % that way while the streams' prompts were read).
            for _, seq, _ in gated:
                seq.spec.proposed = []
        elif gated:
            # the batch's sequences in order, each with its token and any draft already in
            given = {i: len(seq.spec.proposed) for i, seq in seqs if i not in self._gated}
            layout = [(i, 1 + given.get(i, 0)) for i in waiting]
            at = [waiting.index(i) for i, _, _ in gated]
            step = step_cost(self.cost, layout)

            def budget(seq_id: int) -> float:
                wait = self._waits.setdefault(seq_id, Wait())
                return wait.budget(step, self._saved_ms.get(seq_id, 0.0))

            candidates = [(self._acceptance[i].p, len(d)) for i, _, d in gated]
            bystanders = [budget(i) for i in waiting if i not in with_draft]
            budgets = [budget(i) for i, _, _ in gated]
            lengths = plan(self.cost, base, candidates, expected, bystanders, budgets, layout, at)
            for (seq_id, seq, draft), k in zip(gated, lengths, strict=True):
                seq.spec.proposed = draft[:k]
                if not k:
                    self._acceptance[seq_id].held_back()

    def decoded(self, counts: list[tuple[int, int]], pure: bool) -> None:
        """After a decode: `counts`, (sequence id, positions with logits) of each sequence with
        an output, in batch order (more than one: its draft); `pure`, the step read no prompt.
        The step is priced with and without its drafts as llama.cpp split it; each of these
        sequences' steps went on for the cost without drafts, and those without a draft waited
        for the drafts beside them. Its time goes into the cost model (stepped) when it read
        no prompt and ran as one ubatch."""
        self._n_logits = sum(n for _, n in counts)
        self._plain_ms = step_cost(self.cost, [(seq_id, 1) for seq_id, _ in counts])
        sizes = ubatch_sizes(counts)  # split once: priced, and whether it ran as one
        self._step_ms = sum(self.cost(n) for n in sizes)
        self._timed = pure and len(sizes) == 1
        extra = self._step_ms - self._plain_ms
        for seq_id, n in counts:
            wait = self._waits.setdefault(seq_id, Wait())
            wait.elapsed += self._plain_ms
            if n == 1:
                wait.lost += extra

    def stepped(self, seconds: float) -> None:
        """The step's time, its decode and the sampling of every position with logits (a
        draft position is sampled too: ~0.5 ms a row of Gemma 3's 262,144 logits, against
        ~7 ms of decode), into the cost model (see decoded)."""
        if self._timed:
            self.cost.observe(self._n_logits, seconds)

    def verify(
        self,
        slot: Slot,
        index: int,
        sample: Callable[[int], int],
        emit: Callable[[int], None],
    ) -> None:
        """After the decode: `sample(batch index)` at the last token and at each draft
        position in turn, `emit`ting each token (stops and max_tokens apply token by token),
        while the sample equals the draft; then drop the KV cells of the draft not taken."""
        seq = slot.seq
        assert seq is not None
        draft, seq.spec.verifying = seq.spec.verifying, []
        seq.spec.drafted += len(draft)
        plain = self._plain_ms  # the step without any drafts
        self._saved_ms[slot.seq_id] -= self._step_ms - plain
        taken = 0
        for i in range(len(draft) + 1):
            token = sample(index + i)
            hit = i < len(draft) and token == draft[i]
            if hit:  # counted before emit(), which may end the sequence with this token
                seq.spec.accepted += 1
                taken += 1
                self._saved_ms[slot.seq_id] += plain
            emit(token)
            if not hit or slot.seq is None:  # a miss, or the sequence ended here
                break
        # (after the sequence's end too: the slot's next request starts afresh in decide)
        self._acceptance[slot.seq_id].verified(len(draft), taken)
        if self._drafter.adaptive:
            self._adapt(seq, len(draft), taken)
        kept = len(slot.cached) - len(draft) + taken  # through the last token and the draft taken
        if kept < len(slot.cached):
            cut = position(seq.request.media, kept)  # (M-RoPE images: positions behind)
            ll.llama_memory_seq_rm(ll.llama_get_memory(self._ctx), slot.seq_id, cut, -1)
            del slot.cached[kept:]

    def _adapt(self, seq: SeqState, drafted: int, taken: int) -> None:
        """The next draft's length, from how this one fared. Every draft position costs a row
        of logits (the whole vocabulary) whether or not it is taken, so drafts grow while
        they are taken whole (doubling, up to draft_max), shrink to what was taken after a
        miss, and after a draft that missed at its first token drafting pauses for 1, 2,
        4, ... steps: in text that does not repeat its input, prompt lookup finds chance
        matches that mostly miss."""
        if not drafted:
            return
        if taken == drafted:
            seq.spec.max_len = min(2 * seq.spec.max_len, self._options.draft_max)
        else:
            seq.spec.max_len = max(taken, 2)
        if taken:
            seq.spec.misses = 0
        else:
            seq.spec.pause = min(1 << seq.spec.misses, 16)
            seq.spec.misses += 1

    def close(self) -> None:
        self._drafter.close()
