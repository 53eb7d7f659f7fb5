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
