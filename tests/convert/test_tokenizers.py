"""Tokenizer conversion: SentencePiece and BPE tokenizers with different pre-tokenizers,
trained in the test, converted, verified through llama.cpp, and their metadata checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import pytest

from llorch.convert import convert
from llorch.convert.errors import TokenizerError, UnknownPreTokenizerError, VerificationError

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def _fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


@pytest.mark.parametrize(
    ("kind", "pre"),
    [
        ("gpt2", "gpt-2"),
        ("llama3", "llama-bpe"),
        ("qwen2", "qwen2"),
        ("starcoder", "starcoder"),
        ("falcon", "falcon"),
    ],
)
def test_bpe_pre_tokenizers_convert_and_verify(
    kind: str, pre: str, checkpoint: Any, tmp_path: Path
) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY, tokenizer=kind)
    out = tmp_path / "out.gguf"
    report = convert(built.folder, out, outtype="f32")
    assert report.pre_tokenizer == pre
    assert report.verified and report.verify_strings >= 20
    f = _fields(out)
    tok = json.loads((built.folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    assert f[gguf.Keys.Tokenizer.MODEL] == "gpt2"
    assert f[gguf.Keys.Tokenizer.PRE] == pre
    assert len(f[gguf.Keys.Tokenizer.MERGES]) == len(tok["model"]["merges"])
    assert f[gguf.Keys.Tokenizer.BOS_ID] == vocab["<|bos|>"]
    assert f[gguf.Keys.Tokenizer.EOS_ID] == vocab["<|eos|>"]
    assert f[gguf.Keys.Tokenizer.PAD_ID] == vocab["<|pad|>"]
    assert f[gguf.Keys.Tokenizer.ADD_BOS] is True
    assert "<|im_start|>" in f[gguf.Keys.Tokenizer.CHAT_TEMPLATE]
    tokens = f[gguf.Keys.Tokenizer.LIST]
    types = f[gguf.Keys.Tokenizer.TOKEN_TYPE]
    assert types[tokens.index("<|im_end|>")] == gguf.TokenType.CONTROL
    assert types[tokens.index("<tool_call>")] == gguf.TokenType.USER_DEFINED


def test_sentencepiece_metadata(checkpoint: Any, tmp_path: Path) -> None:
    import sentencepiece

    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    (built.folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    gen = json.loads((built.folder / "generation_config.json").read_text())
    (built.folder / "generation_config.json").write_text(
        json.dumps({**gen, "eos_token_id": [2, 3]})
    )
    out = tmp_path / "out.gguf"
    report = convert(built.folder, out, outtype="f32")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(built.folder / "tokenizer.model"))
    f = _fields(out)
    assert f[gguf.Keys.Tokenizer.MODEL] == "llama"
    tokens = f[gguf.Keys.Tokenizer.LIST]
    assert tokens[: sp.vocab_size()] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    scores = f[gguf.Keys.Tokenizer.SCORES]
    assert abs(scores[10] - sp.get_score(10)) < 1e-6
    types = f[gguf.Keys.Tokenizer.TOKEN_TYPE]
    assert types[tokens.index("<0x41>")] == gguf.TokenType.BYTE
    assert types[tokens.index("<tool>")] == gguf.TokenType.USER_DEFINED
    assert (f[gguf.Keys.Tokenizer.BOS_ID], f[gguf.Keys.Tokenizer.EOS_ID]) == (1, 2)
    assert f[gguf.Keys.Tokenizer.UNK_ID] == 0
    assert f[gguf.Keys.Tokenizer.ADD_PREFIX] is True
    assert f[gguf.Keys.Tokenizer.CHAT_TEMPLATE] == "{{ messages[0]['content'] }}"
    assert report.verified


def test_unknown_pre_tokenizer_names_what_it_saw(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY, tokenizer="whitespace")
    out = tmp_path / "out.gguf"
    with pytest.raises(UnknownPreTokenizerError) as err:
        convert(built.folder, out)
    message = str(err.value)
    assert "tokenizer.json" in message and "WhitespaceSplit" in message
    assert "--pre NAME" in message and "llama-bpe" in message
    assert not out.exists()


def test_wrong_pre_override_fails_verification(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY, tokenizer="llama3")
    out = tmp_path / "out.gguf"
    with pytest.raises(VerificationError) as err:
        convert(built.folder, out, pre="gpt-2")
    assert "differently" in str(err.value) and "first difference" in str(err.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [built.folder]  # no temporary file left either
    report = convert(built.folder, out, pre="gpt-2", verify=False)
    assert not report.verified and out.exists()


def test_unigram_sentencepiece_is_refused(checkpoint: Any, helpers: Any, tmp_path: Path) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    spare = tmp_path / "spare"
    spare.mkdir()
    helpers.make_spm(spare, model_type="unigram", vocab_size=built.n_vocab)
    shutil.copy(spare / "tokenizer.model", built.folder / "tokenizer.model")
    with pytest.raises(TokenizerError, match="unigram"):
        convert(built.folder, tmp_path / "out.gguf")


def test_known_hash_cross_checks_and_falls_back(
    checkpoint: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from llorch.convert.tokenizer import pretokenizer

    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY, tokenizer="llama3")
    digest = pretokenizer.check_hash(built.folder / "tokenizer.json")
    assert digest is not None
    # the hash table disagrees with the structure: structure wins, the report says so
    monkeypatch.setitem(pretokenizer.HASHES, digest, "qwen2")
    report = convert(built.folder, tmp_path / "a.gguf", outtype="f32")
    assert report.pre_tokenizer == "llama-bpe" and report.verified
    assert any("hash table says 'qwen2'" in note for note in report.notes)
    # an unrecognised structure falls back to the hash table; verification still decides
    tok = json.loads((built.folder / "tokenizer.json").read_text())
    split = tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    split["Regex"] = f"(?:{split['Regex']})"  # same behaviour, unknown spelling
    (built.folder / "tokenizer.json").write_text(json.dumps(tok))
    monkeypatch.setitem(pretokenizer.HASHES, digest, "llama-bpe")
    report = convert(built.folder, tmp_path / "b.gguf", outtype="f32")
    assert report.pre_tokenizer == "llama-bpe" and report.verified
    assert any("identified by llama.cpp's hash table" in note for note in report.notes)


def test_sentencepiece_without_dummy_prefix(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint(
        "GemmaForCausalLM", "GemmaConfig", {**TINY, "head_dim": 16}, tokenizer="spm-no-prefix"
    )
    out = tmp_path / "out.gguf"
    report = convert(built.folder, out, outtype="f32")
    assert report.verified
    assert _fields(out)[gguf.Keys.Tokenizer.ADD_PREFIX] is False


def test_legacy_string_merges_and_chat_template_json(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY, tokenizer="llama3")
    path = built.folder / "tokenizer.json"
    tok = json.loads(path.read_text())
    pairs = tok["model"]["merges"]
    assert isinstance(pairs[0], list)  # tokenizers >= 0.20 writes [left, right]
    tok["model"]["merges"] = [" ".join(pair) for pair in pairs]  # the older "left right" form
    path.write_text(json.dumps(tok))
    templates = [
        {"name": "default", "template": "{{ 'd' }}"},
        {"name": "tool_use", "template": "t"},
    ]
    (built.folder / "chat_template.json").write_text(json.dumps({"chat_template": templates}))
    out = tmp_path / "out.gguf"
    assert convert(built.folder, out, outtype="f32").verified
    f = _fields(out)
    assert f[gguf.Keys.Tokenizer.MERGES] == [" ".join(pair) for pair in pairs]
    assert f[gguf.Keys.Tokenizer.CHAT_TEMPLATE] == "{{ 'd' }}"
    assert f[gguf.Keys.Tokenizer.CHAT_TEMPLATE_N.format(name="tool_use")] == "t"


def test_every_id_of_an_eos_list_ends_generation(checkpoint: Any, tmp_path: Path) -> None:
    from llorch.convert import llamacpp

    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    gen = json.loads((built.folder / "generation_config.json").read_text())
    (built.folder / "generation_config.json").write_text(
        json.dumps({**gen, "eos_token_id": [2, 5, 7]})
    )
    out = tmp_path / "out.gguf"
    convert(built.folder, out, outtype="f32")
    f = _fields(out)
    assert f[gguf.Keys.Tokenizer.EOS_ID] == 2
    assert (f[gguf.Keys.Tokenizer.EOT_ID], f[gguf.Keys.Tokenizer.EOM_ID]) == (5, 7)
    import llama_cpp as ll

    with llamacpp.load_model(out, vocab_only=True) as model:
        vocab = ll.llama_model_get_vocab(model)
        assert all(ll.llama_vocab_is_eog(vocab, t) for t in (2, 5, 7))
        assert not ll.llama_vocab_is_eog(vocab, 9)
