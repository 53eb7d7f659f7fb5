"""Fixtures for converter tests: tiny tokenizers and checkpoints built offline, and parity checks.

Checkpoints are random tiny models built with transformers (a test-only dependency) and saved
as safetensors; parity compares llama.cpp's logits on the converted GGUF with transformers'
logits on the same tokens at every position.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json

import numpy as np
import pytest

CORPUS = [
    "hello world this is a test of the tokenizer, with code: def f(x): return x + 1",
    "the quick brown fox jumps over the lazy dog 123 4567 3.14",
    "中文测试 日本語 emoji 🦙🚀 Привет   spaces\n\nnewlines\ttabs",
    "I'm sure they've said it's fine; we'll see. {\"json\": [1, 2]}",
] * 40


def make_spm(
    folder: Path, *, vocab_size: int = 400, model_type: str = "bpe", dummy_prefix: bool = True
) -> int:
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=dummy_prefix,
        user_defined_symbols=["<tool>"],
        minloglevel=2,
        hard_vocab_limit=False,
    )
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    return int(spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).vocab_size())


def make_unigram(folder: Path, *, vocab_size: int = 400, keep_model: bool = False) -> int:
    """An XLM-RoBERTa tokenizer: a SentencePiece Unigram model trained here (nmt_nfkc
    normalisation, as XLM-R's), turned into tokenizer.json by transformers as XLM-R's is;
    `keep_model`: the trained sentencepiece.bpe.model beside it."""
    import shutil
    import tempfile

    import sentencepiece as spm
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(CORPUS), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "sentencepiece.bpe"),
            vocab_size=vocab_size,
            model_type="unigram",
            normalization_rule_name="nmt_nfkc",
            minloglevel=2,
            hard_vocab_limit=False,
        )
        corpus.unlink()
        tok = transformers.XLMRobertaTokenizer.from_pretrained(tmp)
        tok.save_pretrained(folder)
        if keep_model:
            shutil.copy(Path(tmp) / "sentencepiece.bpe.model", folder)
    return len(tok)


def make_bpe(folder: Path, kind: str, *, vocab_size: int = 400) -> int:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, trainers
    from tokenizers import pre_tokenizers as pt

    from llorch.convert.tokenizer.pretokenizer import LLAMA3_REGEX, QWEN2_REGEX

    tok = Tokenizer(models.BPE())
    bytes_only = pt.ByteLevel(add_prefix_space=False, use_regex=False)
    if kind in ("gpt2", "pixtral"):  # pixtral: with Mistral 3's image tokens
        tok.pre_tokenizer = pt.ByteLevel(add_prefix_space=False)
    elif kind == "llama3":
        tok.pre_tokenizer = pt.Sequence([pt.Split(Regex(LLAMA3_REGEX), "isolated"), bytes_only])
    elif kind == "qwen2":
        tok.pre_tokenizer = pt.Sequence([pt.Split(Regex(QWEN2_REGEX), "isolated"), bytes_only])
        tok.normalizer = normalizers.NFC()
    elif kind == "starcoder":
        tok.pre_tokenizer = pt.Sequence(
            [pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)]
        )
    elif kind == "falcon":  # Falcon's tokenizer.json pre-tokenizer sequence
        tok.pre_tokenizer = pt.Sequence(
            [
                pt.Punctuation("contiguous"),
                pt.ByteLevel(add_prefix_space=False),
                pt.Digits(individual_digits=False),
                pt.Split(Regex("[0-9][0-9][0-9]"), "isolated"),
            ]
        )
    elif kind == "whitespace":  # not byte-level-regex compatible with any llama.cpp name
        tok.pre_tokenizer = pt.Sequence([pt.WhitespaceSplit(), bytes_only])
    else:
        raise ValueError(kind)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pt.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.add_tokens(["<tool_call>"])
    if kind == "pixtral":
        tok.add_special_tokens(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    tok.save(str(folder / "tokenizer.json"))
    cfg = {
        "bos_token": "<|bos|>",
        "eos_token": "<|eos|>",
        "pad_token": "<|pad|>",
        "add_bos_token": True,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>"
        "{% endfor %}",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return int(tok.get_vocab_size())


def make_wordpiece(folder: Path, *, vocab_size: int = 400, lowercase: bool = True) -> int:
    """A BERT tokenizer (BertNormalizer, BertPreTokenizer, WordPiece, [CLS] x [SEP])."""
    from tokenizers import Tokenizer, models, normalizers, processors, trainers
    from tokenizers import pre_tokenizers as pt

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pt.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(CORPUS + [text.upper() for text in CORPUS[:4]], trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.enable_padding(length=64, pad_token="[PAD]")  # as in some released tokenizer.json
    tok.save(str(folder / "tokenizer.json"))
    cfg = {f"{name.strip('[]').lower()}_token": name for name in specials}
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "do_lower_case": lowercase}))
    return int(tok.get_vocab_size())


def make_modernbert_bpe(folder: Path, *, vocab_size: int = 400) -> int:
    """A ModernBERT tokenizer: byte-level BPE with GPT-2's regex, [CLS] x [SEP], no bos/eos
    names (config.json's bos/eos ids point at [CLS]/[SEP]). Specials are ids 0-4 here so a
    tiny config can name them: [UNK] 0, [CLS] 1, [SEP] 2, [PAD] 3, [MASK] 4."""
    from tokenizers import Tokenizer, decoders, models, processors, trainers
    from tokenizers import pre_tokenizers as pt

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pt.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pt.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    tok.save(str(folder / "tokenizer.json"))
    cfg = {f"{name.strip('[]').lower()}_token": name for name in specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return int(tok.get_vocab_size())


GEMMA4_CHAT = [  # Gemma 4's chat-template tokens
    *("<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|tool>", "<tool|>", "<|think|>"),
    *("<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'),
]
GEMMA4_CORPUS = (
    CORPUS
    + [
        "<|turn>user\nWrite a loop.<turn|>\n<|turn>model\n```python\nfor i in range(3):\n"
        "    print(i)\n\n\n```\n  two  spaces   three\n\n\n\nfour newlines",
        "Größe naïve café — “quotes” … 中文 日本語 🦙\n\n  indented\n    more\n",
    ]
    * 20
)


def make_gemma4_bpe(folder: Path, *, vocab_size: int = 400) -> int:
    """A tokenizer.json in Gemma 4's SPM-style BPE form (as transformers' GemmaConverter writes
    it): " " -> "▁" normalizer, a Split on " " that the normalizer leaves nothing to split,
    byte fallback to `<0xXX>` tokens, specials <pad> <eos> <bos> <unk> <mask> at ids 0-4 and the
    chat tokens after them. The merges are trained on newline-separated runs, so none spans a
    newline boundary, as llama.cpp's gemma4 pre-tokenizer (which splits at newline runs)
    assumes; the result has exactly `vocab_size` tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, trainers
    from tokenizers import pre_tokenizers as pt

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *GEMMA4_CHAT]
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pt.Split(Regex("\n+|[^\n]+"), "isolated")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256, special_tokens=specials, show_progress=False
    )
    trainer_tok.train_from_iterator(GEMMA4_CORPUS, trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    learned = sorted((i, t) for t, i in trained["vocab"].items() if t not in specials)
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + [t for _, t in learned]
    assert len(tokens) == vocab_size, (len(tokens), vocab_size)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=merges,
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pt.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.save(str(folder / "tokenizer.json"))
    template = (
        "{{ bos_token }}{% for m in messages %}<|turn>{{ m['role'] }}\n{{ m['content'] }}"
        "<turn|>\n{% endfor %}<|turn>model\n"
    )
    cfg = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}
    cfg |= {"unk_token": "<unk>", "add_bos_token": True, "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return int(tok.get_vocab_size())


def write_pooling(
    folder: Path, mode: str | None, *, dimension: int | None = None, normalize: bool = False
) -> None:
    """sentence-transformers modules.json and 1_Pooling/config.json (mode None: no pooling);
    `dimension`: the pooling's word_embedding_dimension, which sentence-transformers itself
    needs to load the folder; `normalize`: a 2_Normalize module after it."""
    kind = "sentence_transformers.models."
    modules = [{"idx": 0, "name": "0", "path": "", "type": kind + "Transformer"}]
    if mode is not None:
        modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": kind + "Pooling"})
        (folder / "1_Pooling").mkdir(exist_ok=True)
        flags: dict[str, Any] = {
            f"pooling_mode_{m}": m == mode for m in ("cls_token", "mean_tokens", "lasttoken")
        }
        if dimension is not None:
            flags["word_embedding_dimension"] = dimension
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    if normalize:
        idx = len(modules)
        path = f"{idx}_Normalize"
        modules.append({"idx": idx, "name": str(idx), "path": path, "type": kind + "Normalize"})
        (folder / path).mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules))


@dataclass(frozen=True)
class Built:
    folder: Path
    n_vocab: int


def build_checkpoint(
    folder: Path,
    model_cls: str,
    config_cls: str,
    config: dict[str, Any],
    *,
    tokenizer: str = "spm",
    dtype: str = "float32",
    shard_size: str | None = None,
    seed: int = 0,
) -> Built:
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer == "spm":
        n_vocab = make_spm(folder)
    elif tokenizer == "spm-no-prefix":  # Gemma-style: no dummy-prefix space
        n_vocab = make_spm(folder, dummy_prefix=False)
    elif tokenizer in ("wordpiece", "wordpiece-cased"):
        n_vocab = make_wordpiece(folder, lowercase=tokenizer == "wordpiece")
    elif tokenizer == "gemma4-bpe":  # tokenizer.json only, no tokenizer.model
        n_vocab = make_gemma4_bpe(folder)
    elif tokenizer in ("unigram", "unigram+model"):  # XLM-RoBERTa; +model: its .model too
        n_vocab = make_unigram(folder, keep_model=tokenizer == "unigram+model")
    elif tokenizer == "modernbert":
        n_vocab = make_modernbert_bpe(folder)
    else:
        n_vocab = make_bpe(folder, tokenizer)
    torch.manual_seed(seed)
    if "text_config" in config:  # multimodal wrapper: the vocabulary belongs to the text model
        text = {**config["text_config"], "vocab_size": n_vocab}
        cfg = getattr(transformers, config_cls)(**{**config, "text_config": text})
    else:
        cfg = getattr(transformers, config_cls)(vocab_size=n_vocab, **config)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # larger weights than the default init: logits far from ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            else:
                p.add_(torch.randn_like(p) * 0.1)
    model = model.to(getattr(torch, dtype))
    kwargs: dict[str, Any] = {}
    if shard_size is not None:
        kwargs["max_shard_size"] = shard_size
    model.save_pretrained(folder, **kwargs)
    return Built(folder, n_vocab)


def reference_logits(folder: Path, tokens: list[int]) -> np.ndarray:
    import torch
    import transformers

    # the checkpoint's own class: AutoModelForCausalLM does not take every multimodal wrapper
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(folder, dtype=torch.float32).eval()
    if arch == "Llama4ForConditionalGeneration":
        # its forward builds its output from the language model's, which lacks image_outputs
        # (transformers 5.24); without images it is the language model's forward
        model = model.language_model
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def sample_tokens(n_vocab: int, n: int = 24, seed: int = 1) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, n_vocab, size=n)]


def cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row."""
    dot = (got * ref).sum(axis=-1)
    return dot / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))


@dataclass(frozen=True)
class Parity:
    cos_min: float  # smallest cosine similarity of a position's logits (or hidden state)
    max_diff: float
    scale: float
    argmax_equal: bool
    argmax_agree: float  # fraction of positions with the same argmax
    # positions whose argmax differs although the reference's top-2 margin exceeds twice the
    # largest difference: a real disagreement rather than a near tie flipped by rounding
    unexplained_flips: int
    per_position: tuple[float, ...]  # max |difference| at each position

    def fraction_within(self, relative_bound: float) -> float:
        limit = relative_bound * self.scale
        return sum(d <= limit for d in self.per_position) / len(self.per_position)

    @property
    def relative(self) -> float:
        return self.max_diff / self.scale


def parity(folder: Path, gguf_path: Path, n_vocab: int) -> Parity:
    from llorch.convert import llamacpp

    tokens = sample_tokens(n_vocab)
    ref = reference_logits(folder, tokens)
    got = llamacpp.logits(gguf_path, tokens)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    agree = got.argmax(axis=1) == ref.argmax(axis=1)
    max_diff = float(np.abs(got - ref).max())
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return Parity(
        cos_min=float(cosines(got, ref).min()),
        max_diff=max_diff,
        scale=float(np.abs(ref).max()),
        argmax_equal=bool(agree.all()),
        argmax_agree=float(agree.mean()),
        unexplained_flips=int((~agree & (margin > 2 * max_diff)).sum()),
        per_position=tuple(float(x) for x in np.abs(got - ref).max(axis=1)),
    )


def reference_hidden(folder: Path, tokens: list[int]) -> np.ndarray:
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).last_hidden_state[0].float().numpy()


def embedding_parity(folder: Path, gguf_path: Path, n_vocab: int) -> tuple[Parity, np.ndarray]:
    """Per-token hidden states (llama.cpp pooling off) vs transformers' last_hidden_state, and
    llama.cpp's pooled vector with the reference's hidden states for the pooling test."""
    from llorch.convert import llamacpp

    tokens = sample_tokens(n_vocab)
    ref = reference_hidden(folder, tokens)
    (got,) = llamacpp.embeddings(gguf_path, [tokens], per_token=True)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    diff = np.abs(got - ref)
    result = Parity(
        cos_min=float(cosines(got, ref).min()),
        max_diff=float(diff.max()),
        scale=float(np.abs(ref).max()),
        argmax_equal=True,
        argmax_agree=1.0,
        unexplained_flips=0,
        per_position=tuple(float(x) for x in diff.max(axis=1)),
    )
    return result, ref


@pytest.fixture
def helpers() -> Any:
    """This module, so tests (imported with importlib mode) can reach the helpers."""
    import sys

    return sys.modules[__name__]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Callable[..., Built]:
    def make(model_cls: str, config_cls: str, config: dict[str, Any], **kw: Any) -> Built:
        return build_checkpoint(tmp_path / "hf", model_cls, config_cls, config, **kw)

    return make
