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
is taken only as far as it equals the forced tokens too.
"""

from __future__ import annotations

from collections.abc import Callable

import llama_cpp as ll

from llorch.worker.backend.drafters import Drafter, NgramDrafter, Want
from llorch.worker.backend.protocol import LoraKey, SpecOptions
from llorch.worker.backend.slots import SeqState, Slot


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

    def decide(self, slot: Slot) -> None:
        """Speculation where it keeps the output exactly as without it and simple: not with a
        grammar (its state would have to follow drafts that may be rejected), log-probabilities
        or echo (scored one position per step), or a chain sampled inside the graph (one
        sampled token per sequence and decode), nor where a rejected draft cannot be removed."""
        seq = slot.seq
        assert seq is not None
        request = seq.request
        wanted = self._options.default if request.speculative is None else request.speculative
        seq.speculate = (
            wanted
            and request.sampling.grammar is None
            and request.logprobs is None
            and not request.echo
            and not seq.in_graph
            and self._can_drop_tail
        )
        if seq.speculate:
            adaptive = self._drafter.adaptive
            seq.draft_len = self._options.draft_max if adaptive else self._options.ngram_draft_max
            self._drafter.reset(slot.seq_id)

    def propose(self, slots: list[Slot], group: LoraKey) -> None:
        """Drafts for the sequences that speculate in this step's adapter group: each at most
        what is left of its max_tokens after the token its verification adds."""
        wants: list[Want] = []
        seqs: list[SeqState] = []
        for slot in slots:
            seq = slot.seq
            if seq is None or not seq.speculate or seq.next_token is None:
                continue
            if seq.pause > 0:
                seq.pause -= 1
                continue
            room = min(seq.request.max_tokens - seq.output.n_out - 1, seq.draft_len)
            if seq.request.lora == group and room > 0:
                wants.append((slot.seq_id, [*slot.cached, seq.next_token], room))
                seqs.append(seq)
        if wants:
            for seq, draft in zip(seqs, self._drafter.propose(wants), strict=True):
                seq.draft = draft

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
        draft, seq.verifying = seq.verifying, []
        seq.drafted += len(draft)
        taken = 0
        for i in range(len(draft) + 1):
            token = sample(index + i)
            hit = i < len(draft) and token == draft[i]
            if hit:  # counted before emit(), which may end the sequence with this token
                seq.accepted += 1
                taken += 1
            emit(token)
            if not hit or slot.seq is None:  # a miss, or the sequence ended here
                break
        if self._drafter.adaptive:
            self._adapt(seq, len(draft), taken)
        kept = len(slot.cached) - len(draft) + taken  # through the last token and the draft taken
        if kept < len(slot.cached):
            ll.llama_memory_seq_rm(ll.llama_get_memory(self._ctx), slot.seq_id, kept, -1)
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
            seq.draft_len = min(2 * seq.draft_len, self._options.draft_max)
        else:
            seq.draft_len = max(taken, 2)
        if taken:
            seq.misses = 0
        else:
            seq.pause = min(1 << seq.misses, 16)
            seq.misses += 1

    def close(self) -> None:
        self._drafter.close()
