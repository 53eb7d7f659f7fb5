"""Qwen3 (`Qwen3ForCausalLM`, and `Qwen3Model`: Qwen3-Embedding) converts as the qwen family
does; Qwen3-Reranker, a Qwen3ForCausalLM whose relevance score is its "yes" against its "no",
gets its rank head and template here.

Facts from the model card (Qwen/Qwen3-Reranker-0.6B) and llama.cpp's converter
(conversion/qwen.py, Qwen3Model) and graph (src/llama-graph.cpp, rank pooling):
- The pair is read in an instruction template: system "Judge whether the Document meets the
  requirements based on the Query and the Instruct provided. ...", user "<Instruct>: ...
  <Query>: ... <Document>: ...", then an empty think block opening the assistant's turn.
  The score is p("yes") of the next token, softmax over the "no" and "yes" logits only.
- llama.cpp runs it as rank pooling: `cls.output` holds the lm_head rows of "yes" and "no"
  (in that order; the tied embedding rows where lm_head is tied), the classifier labels are
  ["yes", "no"] (so two outputs a sequence), the causal graph pools the last token, and
  applies the softmax for the qwen3 arch, so its first output is p(yes). llama-server's
  /rerank fills the named chat template `rerank` (`{query}`, `{document}`), written here as
  llama.cpp's converter writes it, with the model card's default instruction.
- Recognised as llama.cpp's converter does, minus its guesses from other architectures: the
  config says only Qwen3ForCausalLM, so the model card's title ("# Qwen3-Reranker", which
  the released README.md files start with) or the name ("qwen3-reranker" in the folder's
  name, a Hub cache's `models--Qwen--Qwen3-Reranker-0.6B`, or `_name_or_path`).
- Unlike llama.cpp's converter, the lm_head stays as the output too: the file is still the
  Qwen3 it was trained from, and an untied checkpoint keeps its own output projection.
"""

from __future__ import annotations

import json

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families import qwen, rope
from llorch.convert.families.base import ModelInput, PlannedTensor, write_common

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
# the model card's default task
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
TEMPLATE = (
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    f"<|im_start|>user\n<Instruct>: {INSTRUCTION}\n<Query>: {{query}}\n<Document>: {{document}}"
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
LABELS = ("yes", "no")  # cls.output's rows, in llama.cpp's order
_NAME = "qwen3-reranker"


def is_reranker(model: ModelInput) -> bool:
    """A Qwen3-Reranker checkpoint, by its model card's title or its name."""
    if model.hf_architecture != "Qwen3ForCausalLM":
        return False
    readme = model.folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if any(line.lower().startswith("# " + _NAME) for line in text.splitlines()):
            return True
    return any(_NAME in name.lower() for name in model.names())


def label_ids(model: ModelInput) -> tuple[int, ...]:
    """The token ids of "yes" and "no" in the checkpoint's tokenizer.json."""
    path = model.folder / "tokenizer.json"
    tok = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    vocab = dict(tok.get("model", {}).get("vocab") or {})
    vocab |= {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    missing = [label for label in LABELS if label not in vocab]
    if missing:
        raise ConfigError(
            f"{path}: a Qwen3-Reranker scores with the tokens {list(LABELS)}, but the "
            f"vocabulary has no {missing}"
        )
    return tuple(int(vocab[label]) for label in LABELS)


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    if not is_reranker(model):
        qwen.write_hparams(model, w)
        return
    label_ids(model)  # refused before anything is written
    write_common(model, w)
    rope.write_scaling(model, w)
    w.add_pooling_type(gguf.PoolingType.RANK)
    w.add_classifier_output_labels(list(LABELS))
    w.add_chat_template([{"name": "rerank", "template": TEMPLATE}])


def plan(model: ModelInput) -> list[PlannedTensor]:
    plans = qwen.plan(model)
    if is_reranker(model):
        plans.append(cls_out(model))
    return plans


def cls_out(model: ModelInput) -> PlannedTensor:
    """`cls.output`: the output projection's rows of "yes" and "no" (only those two rows are
    read, not the vocabulary-sized table)."""
    ckpt = model.ckpt
    source = next(
        name
        for name in ("lm_head.weight", "model.embed_tokens.weight", "embed_tokens.weight")
        if name in ckpt
    )
    n_embd = ckpt.shape(source)[1]

    def load() -> np.ndarray:
        rows = []
        for token in label_ids(model):
            row = ckpt.read_into(
                source, token * n_embd, np.empty(n_embd, ckpt.stored_dtype(source))
            )
            if ckpt.refs[source].dtype == "BF16":
                row = (row.astype(np.uint32) << 16).view(np.float32)
            rows.append(row.astype(np.float32))
        return np.stack(rows)

    name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.CLS_OUT] + ".weight"
    return PlannedTensor(name, (len(LABELS), n_embd), load, sources=(source,))
