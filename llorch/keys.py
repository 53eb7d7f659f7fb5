"""GGUF metadata keys llorch writes where GGUF has none (in the `general.*` style), shared by
the converter that writes them and the worker that reads them. Importing this module loads
nothing else."""

from __future__ import annotations

SOURCE_REVISION = "llorch.source.revision"  # the commit the source checkpoint was read at
SOURCE_FILES = "llorch.source.files"  # every source file read, parallel to SOURCE_SHA256
SOURCE_SHA256 = "llorch.source.sha256"
CONVERTER_VERSION = "llorch.converter.version"
LLAMA_CPP_VERSION = "llorch.llama_cpp.version"
# Whether sentence-transformers normalises the pooled vector (a Normalize module); written for
# encoders with a modules.json, absent otherwise (the worker then normalises).
EMBEDDING_NORMALIZE = "llorch.embedding.normalize"
# sentence-transformers' prompts (config_sentence_transformers.json): a JSON object of name ->
# text (one string, which llama.cpp's metadata API reads whole), and the name of the one
# applied when a request names none.
EMBEDDING_PROMPTS = "llorch.embedding.prompts"
EMBEDDING_DEFAULT_PROMPT = "llorch.embedding.default_prompt"
# Trained with Matryoshka representation learning (EmbeddingGemma, Qwen3-Embedding): a
# vector's leading dimensions are an embedding of their own, so `dimensions` may shorten it.
EMBEDDING_MATRYOSHKA = "llorch.embedding.matryoshka"
# Whether a shortened vector is layer-normalised whole before its leading dimensions are kept
# (nomic-embed-text-v1.5's model card: layer_norm, truncate, then L2 normalisation).
EMBEDDING_MATRYOSHKA_LAYER_NORM = "llorch.embedding.matryoshka_layer_norm"
# In an imatrix convert-batch computed: what it was computed from (calibration text's sha256,
# chunk size, the source's files), so a rerun reuses it only for the same inputs.
IMATRIX_INPUTS = "llorch.imatrix.inputs"
# A quantized file's quality against the high-precision file it was made from, on an evaluation
# text (convert/quality.py): "llorch.quality." + reference, tokens, kld_mean, kld_p99, top1,
# ppl, ppl_reference.
QUALITY_PREFIX = "llorch.quality."
