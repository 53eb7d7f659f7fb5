"""XLM-RoBERTa folders with only fairseq's `sentencepiece.bpe.model` (no tokenizer.json), as
many bge-m3 / multilingual-e5 derived repos ship: the vocabulary is the one the tokenizer.json
of the same SentencePiece model gives (convert/tokenizer/ugm.py, fairseq_vocab), llama.cpp
tokenizes as transformers' XLMRobertaTokenizer does on the .model, and the embeddings of a tiny
random XLM-R converted from such a folder are sentence-transformers'."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llorch.convert import convert, llamacpp
from llorch.convert.errors import TokenizerError
from llorch.convert.verify import CORPUS
from llorch.detector import detect
from tests.convert.parity_cases import XLM_ROBERTA

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model")


def _split(built: Any, tmp_path: Path) -> tuple[Path, Path]:
    """Two copies of one checkpoint: with tokenizer.json (and tokenizer_config.json) only, and
    with sentencepiece.bpe.model only."""
    # one folder name: the GGUF's general.name is the folder's
    with_json, model_only = tmp_path / "json" / "xlmr", tmp_path / "model" / "xlmr"
    for folder, keep in ((with_json, TOKENIZER_FILES[:2]), (model_only, TOKENIZER_FILES[2:])):
        shutil.copytree(built.folder, folder)
        for name in set(TOKENIZER_FILES) - set(keep):
            (folder / name).unlink()
    return with_json, model_only


def _random_texts(n: int, seed: int = 0) -> list[str]:
    """Strings of the corpus' characters and others, spaces and newlines among them."""
    rng = np.random.default_rng(seed)
    # NFKC folds: full-width letters, a circled digit, ideographic space, ligature
    alphabet = sorted(set("".join(CORPUS))) + list("ÀéßŒ’—…€\u3000\u00a0ｆｕｌｌ①ﬁ")  # noqa: RUF001
    out = []
    for _ in range(n):
        chars = rng.choice(alphabet, size=int(rng.integers(1, 40)))
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(tokenizer.json folder, .model folder, their GGUFs)."""
    from tests.convert.conftest import build_checkpoint, write_pooling

    tmp = tmp_path_factory.mktemp("xlmr-spm")
    built = build_checkpoint(
        tmp / "built", "XLMRobertaModel", "XLMRobertaConfig", XLM_ROBERTA, tokenizer="unigram+model"
    )
    # bge-m3's modules: CLS pooling, then Normalize
    write_pooling(
        built.folder, "cls_token", dimension=int(XLM_ROBERTA["hidden_size"]), normalize=True
    )
    with_json, model_only = _split(built, tmp)
    outs = []
    for folder in (with_json, model_only):
        out = folder.parent / "xlmr.gguf"
        report = convert(folder, out, outtype="f32")
        assert report.verified and report.tokenizer == "unigram"
        outs.append(out)
    return with_json, model_only, outs[0], outs[1]


def test_vocabulary_equals_the_tokenizer_jsons(folders: tuple[Path, Path, Path, Path]) -> None:
    """The two GGUFs are the same file: vocabulary, scores, types, special ids, flags and
    the precompiled character map (read with gguf.GGUFReader, whose element-wise read of the
    charsmap costs seconds, only where they differ)."""
    from llorch.convert.tokenizer.hf_tokenizer import load_vocab

    with_json, model_only, from_json, from_model = folders
    assert detect(model_only).tokenizer == "unigram"
    n_vocab = json.loads((model_only / "config.json").read_text())["vocab_size"]
    vocab = load_vocab(model_only, n_vocab)
    assert vocab.tokens[:4] == ("<s>", "<pad>", "</s>", "<unk>")
    assert vocab.special_ids["mask"] == vocab.tokens.index("<mask>") == n_vocab - 1
    assert vocab.files == (model_only / "sentencepiece.bpe.model",)
    # an embedding with rows past the tokenizer: the same [PAD] entries after <mask>
    padded = [load_vocab(folder, n_vocab + 3) for folder in (with_json, model_only)]
    assert padded[1].tokens[-3:] == tuple(f"[PAD{i}]" for i in range(n_vocab, n_vocab + 3))
    assert dataclasses.replace(padded[1], files=padded[0].files) == padded[0]
    if from_json.read_bytes() != from_model.read_bytes():
        fields = [
            {k: f.contents() for k, f in gguf.GGUFReader(p).fields.items()}
            for p in (from_json, from_model)
        ]
        assert fields[1] == fields[0]
        pytest.fail("the GGUFs' metadata is equal but their bytes differ")


def test_llama_cpp_tokenizes_as_transformers(folders: tuple[Path, Path, Path, Path]) -> None:
    import transformers

    _, model_only, _, from_model = folders
    reference = transformers.XLMRobertaTokenizer.from_pretrained(model_only)
    texts = [*CORPUS, *_random_texts(300), "<s>hello</s>", "a<mask>b", "x</s></s>y"]
    with llamacpp.load_model(from_model, vocab_only=True) as model:
        tokenizer = llamacpp.vocab(model)
        differ = [
            t
            for t in texts
            if tokenizer.tokenize(t, add_special=True, parse_special=True)
            != reference(t)["input_ids"]
        ]
    print(f"{len(texts) - len(differ)} of {len(texts)} strings tokenized alike")
    assert differ == []


def test_embeddings_match_sentence_transformers(
    folders: tuple[Path, Path, Path, Path], helpers: Any
) -> None:
    """llama.cpp's CLS-pooled vectors (the GGUF's pooling type) of its own tokens against
    sentence-transformers on the .model-only folder."""
    from sentence_transformers import SentenceTransformer

    _, model_only, _, from_model = folders
    texts = [*CORPUS[:6], "中文测试 日本語 emoji 🦙", "a  run of  spaces and\nnewlines"]
    with llamacpp.load_model(from_model, vocab_only=True) as model:
        tokenizer = llamacpp.vocab(model)
        ids = [tokenizer.tokenize(t, add_special=True, parse_special=True) for t in texts]
    got = np.stack(llamacpp.embeddings(from_model, ids, per_token=False))
    want = SentenceTransformer(str(model_only), device="cpu").encode(texts)
    cosines = helpers.cosines(got, want)
    print("XLM-RoBERTa (.model only) cosine per text:", np.round(cosines, 7))
    assert cosines.min() >= 0.9999


def test_other_fairseq_files_are_refused(folders: tuple[Path, Path, Path, Path]) -> None:
    """mBART's, M2M100's and CamemBERT's files of the same name lay out their specials
    differently: outside XLM-R rows, only tokenizer_class XLMRobertaTokenizer is read so."""
    from llorch.convert.tokenizer.hf_tokenizer import load_vocab

    _, model_only, _, _ = folders
    config = {"architectures": ["BertModel"], "model_type": "bert"}
    with pytest.raises(TokenizerError, match="CamembertTokenizer"):
        load_vocab(model_only, 100, config=config | {"tokenizer_class": "CamembertTokenizer"})
