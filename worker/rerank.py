"""Query-document pairs as a cross-encoder reads them, and their truncation.

BERT's pair form (transformers' BertTokenizer.build_inputs_with_special_tokens with a pair):
`[CLS] query [SEP] document [SEP]`, token type 0 up to the first `[SEP]` included and 1 after
it. The opening and closing tokens are the ones the model's tokenizer adds to a single text
(llama.cpp's add_bos/add_sep: `[CLS]` and `[SEP]` for WordPiece). RoBERTa's (XLM-RoBERTa
cross-encoders) is `<s> query </s></s> document </s>`: a GGUF whose tokenizer adds EOS and
SEP both has that separator between the texts, as llama-server's /rerank forms the pair.

A pair longer than the model reads is cut as sentence-transformers' CrossEncoder cuts it
(the tokenizer's `truncation=True`, Hugging Face tokenizers' LongestFirst): tokens come off the
end of the longer of query and document until both fit, the budget split evenly where both
are longer than half of it (the document gets the odd token when they tie).

An LLM reranker (Qwen3-Reranker) reads a pair as a prompt instead: its GGUF's `rerank` chat
template with the query and the document in place of `{query}` and `{document}`, tokenized
whole with its control tokens parsed and no BOS added, as llama-server's /rerank does and as
the model card's reference code tokenizes it (`TemplateForm`). Such a pair is cut the same
way, longest first, on the query's and document's own tokens, and formed again from their
text.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from llorch.worker.backend.errors import InvalidRequestError
from llorch.worker.backend.protocol import RankInput


@dataclass(frozen=True)
class Ranking:
    """Scores in the documents' order (the model's own: a logit), and the tokens read."""

    scores: list[float]
    prompt_tokens: int


@dataclass(frozen=True)
class PairForm:
    """How the model's tokenizer wraps a pair: `open query middle document close`; the
    middle is the closing token, and a separator after it where the tokenizer adds one
    (RoBERTa's `</s></s>`)."""

    open: tuple[int, ...]
    close: tuple[int, ...]
    middle: tuple[int, ...]

    @classmethod
    def from_single(cls, empty: Sequence[int], separator: int | None = None) -> PairForm:
        """From the tokens the tokenizer gives an empty text with its specials: `[CLS]
        [SEP]` for BERT, `<s> </s>` for XLM-RoBERTa, whose pair has its `separator` too."""
        if len(empty) != 2:
            raise InvalidRequestError(
                "this model's tokenizer does not wrap a text in an opening and a closing token "
                f"(it gives {list(empty)} for an empty one): it has no BERT-style pair form",
                param="model",
            )
        extra = () if separator is None else (separator,)
        return cls((empty[0],), (empty[1],), (empty[1], *extra))

    @property
    def n_specials(self) -> int:
        return len(self.open) + len(self.middle) + len(self.close)

    def pair(self, query: Sequence[int], document: Sequence[int]) -> RankInput:
        first = (*self.open, *query, *self.middle)
        return RankInput(tokens=(*first, *document, *self.close), n_first=len(first))


INSTRUCT = "<Instruct>: "  # Qwen3-Reranker's task line (its model card's format_instruction)
_INSTRUCTION = "{instruction}"
_SLOTS = re.compile(r"\{query\}|\{document\}|\{instruction\}")
_TRIES = 4  # re-forming a cut pair may merge tokens differently: cut again, a few times


@dataclass(frozen=True)
class TemplateForm:
    """An LLM reranker's pair prompt: the GGUF's rerank template (tokenizer.chat_template.
    rerank, as llama.cpp's converter writes it for Qwen3-Reranker)."""

    template: str
    instruction: str | None = None  # filled in at `{instruction}` (instructed)

    def instructed(self, instruction: str | None) -> TemplateForm:
        """The template with `instruction` in place of its own task instruction (the text of
        Qwen3-Reranker's `<Instruct>: ` line); None: as it is."""
        if instruction is None:
            return self
        start = self.template.find(INSTRUCT)
        end = self.template.find("\n", start + len(INSTRUCT))
        if start < 0 or end < 0:
            raise InvalidRequestError(
                f"this model's rerank template has no {INSTRUCT.strip()!r} line to put an "
                "instruction in",
                param="instruction",
            )
        begin = start + len(INSTRUCT)
        template = self.template[:begin] + _INSTRUCTION + self.template[end:]
        return TemplateForm(template, instruction)

    def text(self, query: str, document: str) -> str:
        """The template with the query, the document (and the instruction) in place, each
        slot filled once: a query that contains `{document}` stays as written."""
        values = {"{query}": query, "{document}": document}
        if self.instruction is not None:
            values[_INSTRUCTION] = self.instruction
        return _SLOTS.sub(lambda m: values.get(m.group(0), m.group(0)), self.template)


def template_pairs(
    form: TemplateForm,
    tokenize: Callable[[str, bool], list[int]],
    detokenize: Callable[[Sequence[int]], str],
    query: str,
    documents: Sequence[str],
    *,
    limit: int,
    truncate: bool,
    param: str = "documents",
) -> list[RankInput]:
    """One prompt per document within `limit` tokens; `tokenize(text, parse_special)` adds
    no BOS. Too long: cut (truncate) or refused with a 400 naming the document."""
    out = []
    query_tokens: list[int] | None = None
    for i, document in enumerate(documents):
        tokens = tokenize(form.text(query, document), True)
        if len(tokens) > limit and not truncate:
            raise InvalidRequestError(
                f"the prompt of the query and document {i} is {len(tokens)} tokens; this "
                f"model reads at most {limit} (or ask for truncate: true)",
                param=f"{param}[{i}]",
                constraint=f"tokens <= {limit}",
            )
        if len(tokens) > limit:
            if query_tokens is None:
                query_tokens = tokenize(query, False)
            tokens = _cut(form, tokenize, detokenize, query_tokens, document, len(tokens), limit)
        out.append(RankInput(tokens=tuple(tokens), n_first=len(tokens)))
    return out


def _cut(
    form: TemplateForm,
    tokenize: Callable[[str, bool], list[int]],
    detokenize: Callable[[Sequence[int]], str],
    query: list[int],
    document: str,
    n_tokens: int,
    limit: int,
) -> list[int]:
    doc = tokenize(document, False)
    budget = limit - (n_tokens - len(query) - len(doc))  # what the template leaves them
    for _ in range(_TRIES):
        if budget < 2:
            break
        n_query, n_doc = longest_first(len(query), len(doc), budget)
        tokens = tokenize(form.text(detokenize(query[:n_query]), detokenize(doc[:n_doc])), True)
        if len(tokens) <= limit:
            return tokens
        budget -= len(tokens) - limit
    raise InvalidRequestError(
        f"this model reads at most {limit} tokens, too few for its rerank prompt with a "
        "query and a document",
        param="model",
    )


def longest_first(n_query: int, n_document: int, budget: int) -> tuple[int, int]:
    """The lengths query and document keep so that together they fit `budget` tokens."""
    if n_query + n_document <= budget:
        return n_query, n_document
    small = budget // 2
    if n_query <= small:
        return n_query, budget - n_query
    if n_document <= small:
        return budget - n_document, n_document
    big = budget - small
    return (big, small) if n_query > n_document else (small, big)


def pairs(
    form: PairForm,
    query: Sequence[int],
    documents: Sequence[Sequence[int]],
    *,
    limit: int,
    truncate: bool,
    param: str = "documents",
) -> list[RankInput]:
    """One pair per document within `limit` tokens: cut (truncate) or refused with a 400
    naming the document and the limit."""
    budget = limit - form.n_specials
    if budget < 2:
        raise InvalidRequestError(
            f"this model reads at most {limit} tokens, too few for a query and a document",
            param="model",
        )
    out = []
    for i, document in enumerate(documents):
        total = len(query) + len(document) + form.n_specials
        if total > limit and not truncate:
            raise InvalidRequestError(
                f"the query and document {i} are {total} tokens together; this model reads "
                f"at most {limit} (or ask for truncate: true)",
                param=f"{param}[{i}]",
                constraint=f"tokens <= {limit}",
            )
        n_query, n_document = longest_first(len(query), len(document), budget)
        out.append(form.pair(query[:n_query], document[:n_document]))
    return out


Scorer = Callable[[Sequence[RankInput]], list[float]]


class RankBatcher:
    """Pairs of concurrent rerank requests scored together: each request's pairs wait in a
    queue; the embedding thread takes every waiting request's pairs at once and decodes them
    in one call (packed into the context's batch), so requests that arrive while a decode runs
    share the next one instead of taking a call each. Thread-safe."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._lock = threading.Lock()
        self._waiting: list[tuple[Scorer, list[RankInput], Future[list[float]]]] = []

    def rank(self, score: Scorer, inputs: Sequence[RankInput]) -> list[float]:
        """`score(pairs)` of these pairs, called on the executor with other requests' too."""
        done: Future[list[float]] = Future()
        with self._lock:
            self._waiting.append((score, list(inputs), done))
        self._executor.submit(self._drain)
        return done.result()

    def _drain(self) -> None:
        with self._lock:
            taken, self._waiting = self._waiting, []
        # one call per scorer (one per loaded backend: a reload swaps it)
        by_scorer: dict[int, list[tuple[list[RankInput], Future[list[float]]]]] = {}
        scorers: dict[int, Scorer] = {}
        for score, inputs, done in taken:
            by_scorer.setdefault(id(score), []).append((inputs, done))
            scorers[id(score)] = score
        for key, requests in by_scorer.items():
            try:
                scores = scorers[key]([pair for inputs, _ in requests for pair in inputs])
            except BaseException as exc:  # each request gets the failure
                for _, done in requests:
                    done.set_exception(exc)
                continue
            start = 0
            for inputs, done in requests:
                done.set_result(scores[start : start + len(inputs)])
                start += len(inputs)
