"""Gemma 4 with its tokenizer as released: tokenizer.json only (SPM-style BPE), written as
llama.cpp's "gemma4" vocabulary, verified against `tokenizers` and run for logits parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import pytest

from llorch.convert import convert, llamacpp
from llorch.convert.errors import TokenizerError
from llorch.convert.tokenizer.gemma4 import VISIBLE
from llorch.convert.tokenizer.hf_tokenizer import load_vocab
from tests.convert.parity_cases import CASES

CASE = "gemma4-e2b-per-layer-embd-shared-kv"
N_VOCAB = 400  # make_gemma4_bpe's default size, the parity case's vocab_size_per_layer_input
GEMMA4_CONFIG = {"architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text"}
TEXTS = [
    "\n",
    "\n\n",
    "\n\n\n",
    "\n\n\n\n\n\n\n",
    "a\n\n\nb",
    " leading",
    "   three leading spaces",
    "\n  indented\n    more\n",
    "trailing  \n\n",
    "<|turn>user\nWrite a loop.<turn|>\n<|turn>model\n",
    '<|turn>model\n<|channel>thought\nok<channel|><|tool_call>call:f{x:<|"|>1<|"|>}<tool_call|>',
]


def _fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def _folder(tmp_path: Path, helpers: Any, config: dict[str, Any]) -> Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    helpers.make_gemma4_bpe(folder)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_tokenizer_json_converts_verifies_and_matches_logits(
    checkpoint: Any, helpers: Any, tmp_path: Path
) -> None:
    case = CASES[CASE]  # the same weights as its parity case: they depend on the seed only
    built = checkpoint(case.model_cls, case.config_cls, case.config, tokenizer="gemma4-bpe")
    assert built.n_vocab == N_VOCAB
    assert not (built.folder / "tokenizer.model").exists()
    out = tmp_path / "gemma4.gguf"
    report = convert(built.folder, out, outtype="f32")  # tokenizer verification on: strict
    assert report.verified and report.verify_strings >= 20
    assert report.tokenizer == "bpe" and not report.verify_differences

    f = _fields(out)
    tok = json.loads((built.folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    assert f[gguf.Keys.Tokenizer.MODEL] == "gemma4"
    assert gguf.Keys.Tokenizer.PRE not in f  # llama.cpp implies it from the model name
    assert len(f[gguf.Keys.Tokenizer.MERGES]) == len(tok["model"]["merges"])
    assert set(f[gguf.Keys.Tokenizer.SCORES]) == {-1000.0}
    tokens, types = f[gguf.Keys.Tokenizer.LIST], f[gguf.Keys.Tokenizer.TOKEN_TYPE]
    assert tokens[: len(vocab)] == sorted(vocab, key=vocab.__getitem__)
    kind = dict(zip(tokens, types, strict=True))
    assert kind["<0x0A>"] == kind["<0xFF>"] == gguf.TokenType.BYTE
    assert kind["<bos>"] == kind["<|turn>"] == kind["<turn|>"] == gguf.TokenType.CONTROL
    assert {kind[t] for t in VISIBLE} == {gguf.TokenType.USER_DEFINED}
    assert kind["\n\n"] == gguf.TokenType.NORMAL
    assert f[gguf.Keys.Tokenizer.BOS_ID] == vocab["<bos>"]
    assert f[gguf.Keys.Tokenizer.EOS_ID] == vocab["<eos>"]
    assert f[gguf.Keys.Tokenizer.PAD_ID] == vocab["<pad>"]
    assert f[gguf.Keys.Tokenizer.ADD_BOS] is True
    assert f[gguf.Keys.Tokenizer.ADD_PREFIX] is False
    assert "<|turn>" in f[gguf.Keys.Tokenizer.CHAT_TEMPLATE]

    _same_tokens_as_tokenizers(out, built.folder / "tokenizer.json")

    result = helpers.parity(built.folder, out, built.n_vocab)
    print(f"PARITY gemma4 tokenizer.json f32: cos_min={result.cos_min:.7f} rel={result.relative}")
    assert result.cos_min >= 0.9999, result  # test_parity.py's F32 bounds
    assert result.relative <= 1e-3, result
    assert result.unexplained_flips == 0 and result.argmax_equal, result


def _same_tokens_as_tokenizers(gguf_path: Path, tokenizer_json: Path) -> None:
    """Newline runs, leading spaces and chat turns, with and without BOS; pieces render back."""
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(tokenizer_json))
    bos = ref.token_to_id("<bos>")
    with llamacpp.load_model(gguf_path, vocab_only=True) as model:
        tokenizer = llamacpp.vocab(model)
        for text in TEXTS:
            want = ref.encode(text, add_special_tokens=False).ids
            got = tokenizer.tokenize(text, add_special=False, parse_special=True)
            assert got == want, (text, got, want)
            with_bos = tokenizer.tokenize(text, add_special=True, parse_special=True)
            assert with_bos == [bos, *want], text
            # CONTROL tokens are not rendered; the chat-channel (VISIBLE) ones are
            rendered = b"".join(tokenizer.token_bytes(t) for t in got).decode()
            assert rendered == text.replace("<|turn>", "").replace("<turn|>", ""), text


def test_tokenizer_json_is_preferred_over_tokenizer_model_for_gemma4(
    helpers: Any, tmp_path: Path
) -> None:
    """llama.cpp's Gemma 4 converter reads tokenizer.json (gguf-py's LlamaHfVocab) even where a
    tokenizer.model lies beside it; Gemma 3 keeps its SentencePiece path."""
    spm = tmp_path / "spm"
    spm.mkdir()
    helpers.make_spm(spm)
    folder = _folder(tmp_path, helpers, GEMMA4_CONFIG)
    shutil.copy(spm / "tokenizer.model", folder / "tokenizer.model")
    vocab = load_vocab(folder, N_VOCAB)
    assert (vocab.ggml_model, vocab.files) == ("gemma4", (folder / "tokenizer.json",))
    assert vocab.add_space_prefix is False and vocab.add_bos
    gemma3 = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text"}
    vocab = load_vocab(folder, N_VOCAB, config=gemma3)
    assert (vocab.ggml_model, vocab.kind) == ("llama", "sentencepiece")


@pytest.mark.parametrize(
    ("part", "value", "named"),
    [
        ("normalizer", {"type": "NFKC"}, "normalizer NFKC"),
        ("pre_tokenizer", {"type": "Whitespace"}, "Whitespace"),
        ("model", {"ignore_merges": True}, "ignore_merges"),
    ],
)
def test_unsupported_spm_style_bpe_is_refused_by_name(
    part: str, value: dict[str, Any], named: str, helpers: Any, tmp_path: Path
) -> None:
    folder = _folder(tmp_path, helpers, GEMMA4_CONFIG)
    path = folder / "tokenizer.json"
    tok = json.loads(path.read_text())
    if part == "model":
        tok["model"] |= value
    elif part == "normalizer":
        tok["normalizer"] = {"type": "Sequence", "normalizers": [tok["normalizer"], value]}
    else:
        tok[part] = value
    path.write_text(json.dumps(tok))
    with pytest.raises(TokenizerError, match=named):
        load_vocab(folder, N_VOCAB)


def test_metaspace_form_is_accepted(helpers: Any, tmp_path: Path) -> None:
    """A Metaspace pre-tokenizer that neither prepends nor splits replaces spaces as the
    normalizer does."""
    folder = _folder(tmp_path, helpers, GEMMA4_CONFIG)
    path = folder / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["normalizer"] = None
    tok["pre_tokenizer"] = {
        "type": "Metaspace",
        "replacement": "▁",
        "prepend_scheme": "never",
        "split": False,
    }
    path.write_text(json.dumps(tok))
    assert load_vocab(folder, N_VOCAB).ggml_model == "gemma4"
    tok["pre_tokenizer"]["prepend_scheme"] = "first"
    path.write_text(json.dumps(tok))
    with pytest.raises(TokenizerError, match="Metaspace"):
        load_vocab(folder, N_VOCAB)
