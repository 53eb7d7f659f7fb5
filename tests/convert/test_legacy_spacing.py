"""Phi-3's legacy SentencePiece spacing: reported by verification, not fatal, and only it.

The checkpoint is built as Phi-3 was released: a Llama-2-style SentencePiece tokenizer.model
plus Phi-3's added tokens in tokenizer_config.json (`</s>` and the `<|...|>` chat tokens with
`rstrip`, `legacy: true`), and a config.json naming a Phi-3 model, which is what makes
llama.cpp strip the whitespace right of those tokens. Raw SentencePiece split at special
tokens (HF's legacy mode) keeps that whitespace as an extra `▁`; transformers' tokenizer, which
honours `rstrip`, tokenizes as llama.cpp does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llorch.convert import convert, llamacpp
from llorch.convert.tokenizer.gguf_vocab import special_texts
from llorch.convert.tokenizer.hf_tokenizer import load_vocab
from llorch.convert.verify import _spm_reference, known_difference, special_splitter

PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
PADDING = 3  # released Phi-3 pads its embedding past the tokenizer (32011 -> 32064)


def _added(content: str, *, rstrip: bool, special: bool) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": rstrip,
        "single_word": False,
        "special": special,
    }


def phi3_checkpoint(folder: Path, helpers: Any) -> tuple[Path, int]:
    import torch
    import transformers

    folder.mkdir(parents=True)
    n_spm = helpers.make_spm(folder)
    decoder = {
        "0": _added("<unk>", rstrip=False, special=True),
        "1": _added("<s>", rstrip=False, special=True),
        "2": _added("</s>", rstrip=True, special=False),
    }
    for i, token in enumerate(PHI3_ADDED):
        decoder[str(n_spm + i)] = _added(token, rstrip=token != "<|endoftext|>", special=True)
    tok_cfg = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "legacy": True,
        "clean_up_tokenization_spaces": False,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    n_vocab = n_spm + len(PHI3_ADDED) + PADDING
    torch.manual_seed(0)
    config = transformers.Phi3Config(
        vocab_size=n_vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        sliding_window=None,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=n_spm,
    )
    transformers.Phi3ForCausalLM(config).save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["_name_or_path"] = "microsoft/Phi-3-mini-4k-instruct"  # as released
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, n_vocab


@pytest.fixture
def phi3(tmp_path: Path, helpers: Any) -> tuple[Path, int]:
    return phi3_checkpoint(tmp_path / "Phi-3-mini-4k-instruct", helpers)


def test_phi3_legacy_spacing_is_reported_not_fatal(phi3: tuple[Path, int], tmp_path: Path) -> None:
    import transformers

    folder, _ = phi3
    report = convert(folder, tmp_path / "out.gguf", outtype="f32")
    assert report.verified
    diffs = {d["text"]: d for d in report.verify_differences}
    assert {d["kind"] for d in diffs.values()} == {"legacy-spacing"}
    eos = diffs["before </s> after"]
    # The exact difference: one extra '▁' right after </s> in SentencePiece's legacy mode.
    i = eos["llama_cpp"].index("</s>") + 1
    assert eos["source"] == [*eos["llama_cpp"][:i], "▁", *eos["llama_cpp"][i:]]
    assert "</s>" in eos["explanation"]
    assert any("legacy-spacing" in note and "</s>" in note for note in report.notes)
    # Only strings with a special token followed by a space can differ.
    assert all(" after" in text for text in diffs)

    # llama.cpp's tokens are the ones transformers' own tokenizer gives (rstrip honoured).
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    declared = ["</s>", *PHI3_ADDED[1:]]
    checked = [t for t in diffs if any(tok in t for tok in declared)]
    assert len(checked) >= 3
    for text in checked:
        ids = hf.encode(text, add_special_tokens=False)
        assert hf.convert_ids_to_tokens(ids) == diffs[text]["llama_cpp"], text


def test_strict_outside_the_known_difference(phi3: tuple[Path, int], tmp_path: Path) -> None:
    folder, n_vocab = phi3
    out = tmp_path / "out.gguf"
    convert(folder, out, outtype="f32", verify=False)
    vocab = load_vocab(folder, n_vocab)
    reference, splitter = _spm_reference(vocab), special_splitter(vocab)
    with llamacpp.load_model(out, vocab_only=True) as model:
        tok = llamacpp.vocab(model)
        strip = llamacpp.strip_attributes(tok, vocab.tokens, special_texts(vocab))

        def check(text: str, got: list[int]) -> Any:
            return known_difference(text, got, reference, splitter, strip, vocab.tokens)

        spaced = "before </s> after"
        got = tok.tokenize(spaced, add_special=False, parse_special=True)
        assert got != reference(spaced) and check(spaced, got) is not None
        # Any other change to the same string is a real difference.
        assert check(spaced, [*got[:-1], got[-1] + 1]) is None
        assert check(spaced, reference(spaced)[:-1]) is None
        # Plain text: no special token, never excused, even with an extra space token.
        plain = "before  after"
        assert check(plain, reference("before after")) is None
        # <|endoftext|> keeps its right whitespace in llama.cpp (not rstrip): no excuse.
        assert strip["<|endoftext|>"] == (False, False) and strip["</s>"] == (False, True)
        kept = "before <|endoftext|> after"
        wrong = reference("before <|endoftext|>after")
        assert check(kept, wrong) is None


def test_batch_record_carries_the_difference(
    phi3: tuple[Path, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llorch.convert.batch import convert_batch, plan_from_dirs

    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))  # its own digest memo
    folder, _ = phi3
    report = convert_batch(plan_from_dirs([folder.parent], ["f32"]), tmp_path / "batch")
    (job,) = report.jobs
    assert job.ok, job.error
    (record,) = job.outputs
    differences = record["verification"]["differences"]
    assert any(d["text"] == "before </s> after" for d in differences)
    sidecar = next((tmp_path / "batch").glob("*.provenance.json"))
    saved = json.loads(sidecar.read_text())
    assert saved["verification"]["differences"] == differences
