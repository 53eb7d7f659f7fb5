"""JSON schemas to GBNF grammars, with llama.cpp's own converter.

llama_cpp is imported when a conversion runs, not when this module is imported: the HTTP layer
is handed `json_grammar` and must not load llama_cpp just by being imported.
"""

from __future__ import annotations

import json
from typing import Any

from llorch.worker.backend.errors import InvalidRequestError


class SchemaError(InvalidRequestError):
    """A JSON schema the converter cannot turn into a grammar (a client error)."""


# "json_object" asks for any JSON object. The converter's object rule keeps whitespace to one
# optional space, where the generic JSON grammar's whitespace lets a model ramble in newlines.
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The GBNF grammar of documents valid under `schema`; None: any JSON object."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        text = json.dumps(_ANY_OBJECT if schema is None else schema)
        return str(json_schema_to_gbnf(text))
    except RecursionError:
        raise SchemaError("the JSON schema nests too deeply to convert to a grammar") from None
    except Exception as exc:  # the converter raises bare ValueErrors, KeyErrors, ...
        detail = str(exc) or type(exc).__name__
        raise SchemaError(f"the JSON schema cannot be converted to a grammar: {detail}") from None
