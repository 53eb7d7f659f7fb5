"""Build the GGUF vocabulary (gguf_vocab.Vocab) from a Hugging Face folder's tokenizer files.

SentencePiece `tokenizer.model` becomes llama.cpp's "llama" (SPM) vocabulary; byte-level BPE
`tokenizer.json` becomes "gpt2" with merges and a pre-tokenizer name (pretokenizer.py);
a WordPiece `tokenizer.json` (BERT) becomes "bert" (wordpiece.py), a Unigram one (XLM-RoBERTa)
"t5" (ugm.py), as does XLM-RoBERTa's `sentencepiece.bpe.model` in a folder without
tokenizer.json; Gemma 4's SPM-style
BPE `tokenizer.json` becomes "gemma4" (gemma4.py).
Special token ids, add_bos/add_eos and the chat template come from tokenizer_config.json,
config.json, generation_config.json, chat_template.jinja and chat_template.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf

from llorch.convert.errors import MissingTokenizerError, ShapeMismatchError, TokenizerError
from llorch.convert.tokenizer import fim_tokens, gemma4, pretokenizer, ugm, wordpiece
from llorch.convert.tokenizer.gguf_vocab import Vocab
from llorch.convert.tokenizer.spm import BPE, MODEL_TYPES, read_spm
from llorch.detector import read_json
from llorch.detector.table import row_for_config

_T = gguf.TokenType
# tokenizer classes whose sentencepiece.bpe.model has fairseq's layout (ugm.fairseq_vocab);
# mBART's, M2M100's and CamemBERT's files of that name put their specials elsewhere
_FAIRSEQ_CLASSES = ("XLMRobertaTokenizer", "XLMRobertaTokenizerFast")
_FAIRSEQ_FAMILIES = ("xlm_roberta",)


def _content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def _added_tokens(folder: Path, tok_json: dict[str, Any], tok_cfg: dict[str, Any]) -> dict:
    """id -> (content, special) from tokenizer.json, tokenizer_config.json, added_tokens.json."""
    added: dict[int, tuple[str, bool]] = {}
    for entry in tok_json.get("added_tokens", []):
        added[int(entry["id"])] = (entry["content"], bool(entry.get("special", False)))
    for key, entry in tok_cfg.get("added_tokens_decoder", {}).items():
        added.setdefault(int(key), (entry["content"], bool(entry.get("special", False))))
    for content, idx in _optional_json(folder / "added_tokens.json").items():
        added.setdefault(int(idx), (content, False))
    return added


def _chat_template(folder: Path, tok_cfg: dict[str, Any]) -> str | list[dict[str, str]] | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = folder / "chat_template.json"
    if as_json.is_file():
        value = read_json(as_json).get("chat_template")
    else:
        value = tok_cfg.get("chat_template")
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, list):
        return [{"name": str(v["name"]), "template": str(v["template"])} for v in value]
    raise TokenizerError(f"{folder}: chat_template must be a string or a list of named templates")


def _post_processor_adds(tok_json: dict[str, Any]) -> tuple[bool, bool]:
    """(adds bos, adds eos) judged from a TemplateProcessing post-processor."""
    node = tok_json.get("post_processor") or {}
    nodes = node.get("processors", [node]) if node.get("type") == "Sequence" else [node]
    for n in nodes:
        if n.get("type") == "TemplateProcessing":
            single = n.get("single", [])
            first = bool(single) and "SpecialToken" in single[0]
            last = bool(single) and "SpecialToken" in single[-1]
            return first, last
    return False, False


def load_vocab(
    folder: Path,
    n_vocab: int,
    *,
    pre_override: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Vocab:
    """`config`: config.json as already read (by detection), so it is not read again."""
    tok_cfg = _optional_json(folder / "tokenizer_config.json")
    spm_path, json_path = folder / "tokenizer.model", folder / "tokenizer.json"
    tok_json = read_json(json_path) if json_path.is_file() else {}
    notes: list[str] = []
    if config is None:
        config = _optional_json(folder / "config.json")
    # the table's tokenizer column: Gemma 4's tokenizer.json, even beside a tokenizer.model
    row = row_for_config(config)
    spm_bpe = row is not None and row.tokenizer == gemma4.GGML_MODEL and gemma4.is_spm_bpe(tok_json)
    fairseq = folder / ugm.FAIRSEQ_FILE
    if not spm_path.is_file() and not json_path.is_file() and fairseq.is_file():
        cls = tok_cfg.get("tokenizer_class") or config.get("tokenizer_class")
        if (row is None or row.family not in _FAIRSEQ_FAMILIES) and cls not in _FAIRSEQ_CLASSES:
            raise TokenizerError(
                f"{fairseq}: read only as XLM-RoBERTa's tokenizer (families "
                f"{list(_FAIRSEQ_FAMILIES)} or tokenizer_class {list(_FAIRSEQ_CLASSES)}); this "
                f"folder's tokenizer_class is {cls!r}: add its tokenizer.json"
            )
        return ugm.fairseq_vocab(fairseq, tok_cfg, n_vocab, _chat_template(folder, tok_cfg))
    if not spm_path.is_file() and ugm.is_unigram(tok_json):
        return ugm.ugm_vocab(json_path, tok_json, tok_cfg, n_vocab, _chat_template(folder, tok_cfg))
    if not spm_path.is_file() and wordpiece.is_wordpiece(tok_json):
        chat = _chat_template(folder, tok_cfg)
        return wordpiece.wordpiece_vocab(json_path, tok_json, tok_cfg, n_vocab, chat)
    if spm_bpe:
        gemma4.check(tok_json, str(json_path))
        tokens, types, merges = gemma4.base_vocab(tok_json)
        scores: list[float] | None = [gemma4.SCORE] * len(tokens)
        kind, ggml_model, pre, files = "bpe", gemma4.GGML_MODEL, None, (json_path,)
        add_space_prefix: bool | None = False
        default_bos, default_eos = True, False
    elif spm_path.is_file():
        spm = read_spm(spm_path)
        if spm.model_type != BPE:
            # llama.cpp's SPM tokenizer merges pieces by score (BPE); a unigram model's
            # Viterbi segmentation differs, so it would tokenize differently.
            raise TokenizerError(
                f"{spm_path}: SentencePiece model type {MODEL_TYPES.get(spm.model_type)!r} is "
                "not supported; llama.cpp's SentencePiece tokenizer reproduces BPE models only"
            )
        tokens, types = list(spm.pieces), list(spm.types)
        scores = list(spm.scores)
        merges = []
        kind, ggml_model, pre, files = "sentencepiece", "llama", None, (spm_path,)
        add_space_prefix = spm.add_dummy_prefix
        default_bos, default_eos = True, False
    elif json_path.is_file():
        where = str(json_path)
        pretokenizer.require_byte_level(tok_json, where=where)
        found = pretokenizer.identify(tok_json, path=json_path, override=pre_override)
        pre = found.name
        if found.note:
            notes.append(found.note)
        model = tok_json["model"]
        vocab_map: dict[str, int] = model["vocab"]
        size = max(vocab_map.values()) + 1 if vocab_map else 0
        tokens = [""] * size
        for text, idx in vocab_map.items():
            tokens[idx] = text
        types = [_T.NORMAL] * size
        scores = None
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        kind, ggml_model, files = "bpe", "gpt2", (json_path,)
        add_space_prefix = None
        default_bos, default_eos = _post_processor_adds(tok_json)
    else:
        raise MissingTokenizerError(
            f"{folder}: no tokenizer.model (SentencePiece), tokenizer.json or "
            f"{ugm.FAIRSEQ_FILE} (XLM-RoBERTa) found"
        )
    for idx, (content, special) in sorted(_added_tokens(folder, tok_json, tok_cfg).items()):
        while idx >= len(tokens):
            tokens.append("")
            types.append(_T.UNUSED)
            if scores is not None:
                scores.append(-1000.0)
        if kind == "sentencepiece" and tokens[idx] == content and types[idx] != _T.NORMAL:
            continue  # the model's own control/user-defined piece
        tokens[idx] = content
        types[idx] = _T.CONTROL if special else _T.USER_DEFINED
    if len(tokens) > n_vocab:
        raise ShapeMismatchError(
            f"{files[0]}: tokenizer has {len(tokens)} tokens but the embedding has {n_vocab} rows"
        )
    while len(tokens) < n_vocab:
        tokens.append("")
        types.append(_T.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    for i, text in enumerate(tokens):
        if text == "":  # ids without a token: llama.cpp needs distinct, unused entries
            tokens[i] = f"[PAD{i}]"
            types[i] = _T.UNUSED
    if spm_bpe:
        gemma4.retype(tokens, types)
    lookup = {text: i for i, text in enumerate(tokens)}
    special_ids = _special_ids(folder, tok_cfg, lookup, notes, config)
    if kind == "sentencepiece":
        for i, t in enumerate(types):
            if t == _T.UNKNOWN:
                special_ids.setdefault("unk", i)
    fim_tokens.add_fim_ids(tokens, types, special_ids)
    # llama.cpp forces add_bos for gemma4 whatever the GGUF says (llama-vocab.cpp)
    add_bos = True if spm_bpe else tok_cfg.get("add_bos_token", default_bos)
    add_eos = tok_cfg.get("add_eos_token", default_eos)
    return Vocab(
        kind=kind,
        ggml_model=ggml_model,
        tokens=tuple(tokens),
        types=tuple(int(t) for t in types),
        scores=tuple(scores) if scores is not None else None,
        merges=tuple(merges),
        pre=pre,
        special_ids=special_ids,
        add_bos=bool(add_bos),
        add_eos=bool(add_eos),
        add_space_prefix=add_space_prefix,
        chat_template=_chat_template(folder, tok_cfg),
        files=files,
        notes=tuple(notes),
    )


def _special_ids(
    folder: Path,
    tok_cfg: dict[str, Any],
    lookup: dict[str, int],
    notes: list[str],
    known_config: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    config = known_config if known_config is not None else _optional_json(folder / "config.json")
    generation = _optional_json(folder / "generation_config.json")
    ids: dict[str, int] = {}
    for name in ("bos", "eos", "unk", "pad"):
        text = _content(tok_cfg.get(f"{name}_token"))
        if text is not None:
            if text not in lookup:
                raise TokenizerError(
                    f"{folder / 'tokenizer_config.json'}: {name}_token {text!r} is not in the "
                    "vocabulary"
                )
            ids[name] = lookup[text]
            continue
        for source in (generation, config):
            value = source.get(f"{name}_token_id")
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, int) and 0 <= value < len(lookup):
                ids[name] = value
                break
    # Every id of an eos_token_id list ends generation, whichever one eos_token named.
    for source in (generation, config):
        listed = source.get("eos_token_id")
        if isinstance(listed, list):
            _extra_eos([v for v in listed if v != ids.get("eos")], ids, len(lookup), notes)
            break
    return ids


def _extra_eos(extra: list[Any], ids: dict[str, int], n_vocab: int, notes: list[str]) -> None:
    """Ids after the first of an eos_token_id list (Llama 3.1: end_of_text, eom_id, eot_id).

    GGUF has one eos id, plus eot and eom ids; llama.cpp stops on all three
    (llama_vocab_is_eog), so the rest of the list goes there, in order.
    """
    slots = ["eot", "eom"]
    for value in extra:
        if not (isinstance(value, int) and 0 <= value < n_vocab):
            continue
        if not slots:
            notes.append(f"eos_token_id {value} has no GGUF key left (eos, eot, eom are taken)")
            continue
        ids.setdefault(slots.pop(0), value)


__all__ = ["load_vocab"]
