"""SentencePiece Unigram tokenizer.json (XLM-RoBERTa) -> llama.cpp's UGM vocabulary
(`tokenizer.ggml.model` t5).

Facts from llama.cpp's converter (conversion/bert.py, _xlmroberta_set_vocab) and
src/llama-vocab.cpp (llm_tokenizer_ugm):
- The pieces and their scores are written in tokenizer.json's order, which is already
  fairseq's (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>` last): no re-alignment, unlike
  the sentencepiece.bpe.model file, whose ids are one off.
- The normalizer is SentencePiece's precompiled character map (the `Precompiled` node's
  base64 `precompiled_charsmap`), which llama.cpp applies itself, with `add_space_prefix`
  (Metaspace's prepend_scheme) and `remove_extra_whitespaces` (a WhitespaceSplit
  pre-tokenizer, or in older files a normalizer replacing runs of spaces by one).
- `<s> text </s>`, and the pair `<s> A </s></s> B </s>`: add BOS and EOS, and SEP (`</s>`)
  between a pair's query and document, which is what llama-server's /rerank and llorch's
  pair form read from `tokenizer.ggml.add_sep_token`.
- A folder with only `sentencepiece.bpe.model` (fairseq's XLM-R file; `fairseq_vocab`): its
  pieces are SentencePiece's `<unk>` 0, `<s>` 1, `</s>` 2, then the rest; fairseq's
  dictionary (and transformers' XLMRobertaTokenizer, and the tokenizer.json it converts to)
  puts `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3 first, every later piece one id up
  (fairseq_offset 1), and `<mask>` after the last piece. llama.cpp's converter realigns the
  same way but leaves `<mask>` a `[PAD]` entry (it names it only for nomic-bert-moe); written
  here as the tokenizer.json has it, so both files give the same vocabulary.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import gguf

from llorch.convert.errors import ShapeMismatchError, TokenizerError
from llorch.convert.tokenizer.gguf_vocab import Vocab
from llorch.convert.tokenizer.spm import UNIGRAM, read_spm

_T = gguf.TokenType
ROLES = {
    "bos": "bos_token",
    "eos": "eos_token",
    "unk": "unk_token",
    "pad": "pad_token",
    "sep": "sep_token",
    "mask": "mask_token",
}


def is_unigram(tok_json: dict[str, Any]) -> bool:
    return (tok_json.get("model") or {}).get("type") == "Unigram"


def _nodes(node: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    if not node:
        return []
    return [n for child in node.get(key, []) for n in _nodes(child, key)] or [node]


# older tokenizer.json files (XLM-R's on the Hub) collapse runs of spaces in the normalizer
_COLLAPSE = {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}


def _normalizer(tok_json: dict[str, Any], where: Path) -> tuple[bytes, bool]:
    """(the precompiled character map, whether runs of spaces collapse)."""
    found = _nodes(tok_json.get("normalizer"), "normalizers")
    charsmaps = [n["precompiled_charsmap"] for n in found if n.get("type") == "Precompiled"]
    others = [n for n in found if n.get("type") not in ("Precompiled", None) and n != _COLLAPSE]
    if others:
        raise TokenizerError(
            f"{where}: Unigram normalizer {[n.get('type') for n in others]} is not supported "
            "(llama.cpp's UGM tokenizer applies SentencePiece's precompiled character map and "
            "collapses whitespace, nothing else)"
        )
    charsmap = base64.b64decode(charsmaps[0]) if charsmaps and charsmaps[0] else b""
    return charsmap, _COLLAPSE in found


def _pre_tokenizer(tok_json: dict[str, Any], where: Path) -> tuple[bool, bool]:
    """(add_space_prefix, remove_extra_whitespaces) from the Metaspace pre-tokenizer."""
    found = _nodes(tok_json.get("pre_tokenizer"), "pretokenizers")
    kinds = [n.get("type") for n in found]
    metaspace = [n for n in found if n.get("type") == "Metaspace"]
    if not metaspace or set(kinds) - {"Metaspace", "WhitespaceSplit"}:
        raise TokenizerError(
            f"{where}: Unigram pre-tokenizer {kinds} is not supported (llama.cpp's UGM "
            "tokenizer splits as SentencePiece: Metaspace, optionally after WhitespaceSplit)"
        )
    node = metaspace[0]
    prefix = node.get("prepend_scheme", "always" if node.get("add_prefix_space", True) else "never")
    return prefix == "always", "WhitespaceSplit" in kinds


EDGE_NOTE = (
    "Unigram: this tokenizer.json collapses runs of spaces but keeps a text's leading and "
    "trailing whitespace as '\u2581' tokens, where SentencePiece (and llama.cpp) strip it; texts "
    "with whitespace at an edge or next to a special token are not verified"
)


def _edges(specials: list[str]) -> re.Pattern[str]:
    """Whitespace at a text's edge or beside a special token (where fragments start/end)."""
    names = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
    beside = rf"|\s(?:{names})|(?:{names})\s" if names else ""
    return re.compile(rf"\A\s|\s\Z{beside}")


def _adds(tok_json: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(BOS, EOS, SEP between a pair's texts) from the TemplateProcessing post-processor."""
    node = tok_json.get("post_processor") or {}
    single, pair = node.get("single") or [], node.get("pair") or []
    if node.get("type") == "RobertaProcessing":  # `<s> A </s>`, `<s> A </s></s> B </s>`
        return True, True, True
    if node.get("type") != "TemplateProcessing" or not single:
        return False, False, False
    kinds = ["SpecialToken" if "SpecialToken" in n else "Sequence" for n in pair]
    double = any(kinds[i : i + 2] == ["SpecialToken"] * 2 for i in range(1, len(kinds) - 1))
    return "SpecialToken" in single[0], "SpecialToken" in single[-1], double


def ugm_vocab(
    json_path: Path,
    tok_json: dict[str, Any],
    tok_cfg: dict[str, Any],
    n_vocab: int,
    chat_template: str | list[dict[str, str]] | None,
) -> Vocab:
    """The GGUF vocabulary of a Unigram tokenizer.json."""
    model = tok_json["model"]
    if model.get("byte_fallback"):
        raise TokenizerError(f"{json_path}: a Unigram model with byte_fallback is not supported")
    pieces = [(str(p), float(s)) for p, s in model["vocab"]]
    tokens = [p for p, _ in pieces]
    scores = [s for _, s in pieces]
    types = [int(_T.NORMAL)] * len(tokens)
    unk = model.get("unk_id")
    if isinstance(unk, int):
        types[unk] = int(_T.UNKNOWN)
    for entry in tok_json.get("added_tokens", []):
        idx = int(entry["id"])
        if idx >= len(tokens) or tokens[idx] != entry["content"]:
            raise TokenizerError(
                f"{json_path}: added token {entry['content']!r} is not piece {idx}"
            )
        if idx != unk:
            types[idx] = int(_T.CONTROL if entry.get("special") else _T.USER_DEFINED)
    _pad(tokens, scores, types, n_vocab, json_path)
    special_ids = _special_ids(tokens, tok_cfg)
    add_space_prefix, split_spaces = _pre_tokenizer(tok_json, json_path)
    charsmap, collapse = _normalizer(tok_json, json_path)
    add_bos, add_eos, add_sep = _adds(tok_json)
    # SentencePiece's own normalisation strips edges (a WhitespaceSplit pre-tokenizer does
    # too); a normaliser that only collapses leaves them, unlike llama.cpp
    edges = collapse and not split_spaces
    kinds = (int(_T.CONTROL), int(_T.UNKNOWN), int(_T.USER_DEFINED))
    specials = [t for t, k in zip(tokens, types, strict=True) if k in kinds]
    return Vocab(
        kind="unigram",
        ggml_model="t5",
        tokens=tuple(tokens),
        types=tuple(types),
        scores=tuple(scores),
        merges=(),
        pre="default",
        special_ids=special_ids,
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=add_space_prefix,
        chat_template=chat_template,
        files=(json_path,),
        add_sep=add_sep,
        remove_extra_whitespaces=split_spaces or collapse,
        precompiled_charsmap=charsmap,
        differs=_edges(specials) if edges else None,
        notes=(EDGE_NOTE,) if edges else (),
    )


FAIRSEQ_FILE = "sentencepiece.bpe.model"
FAIRSEQ_HEAD = ("<s>", "<pad>", "</s>", "<unk>")
FAIRSEQ_OFFSET = 1  # a SentencePiece id past its first three is one lower than fairseq's


def _pad(
    tokens: list[str], scores: list[float], types: list[int], n_vocab: int, source: Path
) -> None:
    """Unused `[PADi]` pieces up to the embedding's rows (llama.cpp's converter does the
    same); a vocabulary larger than the embedding is an error."""
    if len(tokens) > n_vocab:
        raise ShapeMismatchError(
            f"{source}: tokenizer has {len(tokens)} tokens but the embedding has {n_vocab} rows"
        )
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-10000.0)
        types.append(int(_T.UNUSED))


def _special_ids(
    tokens: list[str], tok_cfg: dict[str, Any], defaults: dict[str, str] | None = None
) -> dict[str, int]:
    """Each role's id: the piece tokenizer_config.json names for it, else `defaults`' piece."""
    index = {t: i for i, t in enumerate(tokens)}
    special_ids = {role: index[text] for role, text in (defaults or {}).items()}
    for role, key in ROLES.items():
        value = tok_cfg.get(key)
        text = value.get("content") if isinstance(value, dict) else value
        if isinstance(text, str) and text in index:
            special_ids[role] = index[text]
    return special_ids


def fairseq_id(spm_id: int) -> int:
    """fairseq's id of a SentencePiece id (`<unk>` 0 -> 3; SentencePiece's `<s>`/`</s>`
    never come out of its encoder)."""
    return FAIRSEQ_HEAD.index("<unk>") if spm_id == 0 else spm_id + FAIRSEQ_OFFSET


def fairseq_vocab(
    model_path: Path,
    tok_cfg: dict[str, Any],
    n_vocab: int,
    chat_template: str | list[dict[str, str]] | None,
) -> Vocab:
    """The GGUF vocabulary of an XLM-R `sentencepiece.bpe.model` (fairseq's layout)."""
    spm = read_spm(model_path)
    kinds = (int(_T.UNKNOWN), int(_T.CONTROL), int(_T.CONTROL))
    if spm.model_type != UNIGRAM or tuple(spm.types[:3]) != kinds:
        raise TokenizerError(
            f"{model_path}: not XLM-RoBERTa's SentencePiece model (a Unigram model whose first "
            f"pieces are <unk>, <s>, </s>); found {spm.pieces[:3]} and model type "
            f"{spm.model_type}"
        )
    if int(_T.BYTE) in spm.types:
        raise TokenizerError(f"{model_path}: a Unigram model with byte pieces is not supported")
    head = [int(_T.CONTROL)] * 3 + [int(_T.UNKNOWN)]
    tokens = [*FAIRSEQ_HEAD, *spm.pieces[3:], "<mask>"]
    scores = [0.0] * 4 + list(spm.scores[3:]) + [0.0]
    types = [*head, *(int(t) for t in spm.types[3:]), int(_T.CONTROL)]
    _pad(tokens, scores, types, n_vocab, model_path)
    # XLMRobertaTokenizer's defaults, unless tokenizer_config.json names others
    named = {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>", "sep": "</s>"}
    special_ids = _special_ids(tokens, tok_cfg, {**named, "mask": "<mask>"})
    return Vocab(
        kind="unigram",
        ggml_model="t5",
        tokens=tuple(tokens),
        types=tuple(types),
        scores=tuple(scores),
        merges=(),
        pre="default",
        special_ids=special_ids,
        add_bos=True,  # build_inputs_with_special_tokens: `<s> A </s>`, `<s> A </s></s> B </s>`
        add_eos=True,
        add_space_prefix=spm.add_dummy_prefix,
        chat_template=chat_template,
        files=(model_path,),
        add_sep=True,
        remove_extra_whitespaces=spm.remove_extra_whitespaces,
        precompiled_charsmap=spm.precompiled_charsmap,
    )
