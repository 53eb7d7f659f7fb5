"""Batch sources: a local folder, or `hf:org/name[@revision]` from the Hugging Face cache.

A repo is looked up in the local cache first (huggingface_hub's offline path); only when that
fails and the hub may be used (`HF_HUB_OFFLINE` unset) is it downloaded, and then only the
files conversion reads: config, tokenizer and index files first, then the weight files the
index names (a repo may hold the same weights twice: Mistral's releases have a
`consolidated.safetensors` beside the shards), or every `*.safetensors` without an index. The
snapshot folder's name is the commit, recorded as provenance.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from llorch.convert.batch.errors import SourceResolveError

HF_PREFIX = "hf:"
# What conversion reads besides the weights (llorch.convert.cache._READ); nothing else is
# fetched.
SMALL_FILES = ["*.json", "tokenizer.model", "sentencepiece.bpe.model", "*.jinja"]
WEIGHTS_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class Source:
    spec: str  # as written in the manifest or on the command line
    folder: Path  # resolved, absolute
    repo_id: str | None = None
    revision: str | None = None  # as asked (branch, tag or commit)
    commit: str | None = None  # the snapshot's commit, for a cached repo

    @property
    def default_id(self) -> str:
        if self.repo_id is not None:
            return self.repo_id.replace("/", "--")
        return self.folder.name

    @property
    def url(self) -> str | None:
        if self.repo_id is None:
            return None
        from huggingface_hub import constants

        return f"{constants.ENDPOINT}/{self.repo_id}"

    def to_json(self) -> dict[str, str | None]:
        return {
            "spec": self.spec,
            "folder": str(self.folder),
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "url": self.url,
        }


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def _weights(folder: Path) -> list[str]:
    """The weight files to fetch: the shards the index names, or every *.safetensors."""
    index = folder / WEIGHTS_INDEX
    if not index.is_file():
        return ["*.safetensors"]
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted({str(name) for name in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SourceResolveError(f"{index}: not a safetensors index ({exc})") from exc


def _fetch(repo_id: str, revision: str | None, *, local_only: bool) -> Path:
    """The snapshot with what conversion reads, from the cache (`local_only`) or the hub. The
    weights are asked for at the commit the small files came from, so a branch that moves in
    between cannot mix two commits. The cache lookup uses the download's patterns:
    huggingface_hub (1.x) checks a cached snapshot against the repo's file listing it cached,
    and a snapshot fetched here (no .bin, no README) would otherwise count as incomplete."""
    from huggingface_hub import snapshot_download

    small = Path(
        snapshot_download(
            repo_id, revision=revision, allow_patterns=SMALL_FILES, local_files_only=local_only
        )
    )
    return Path(
        snapshot_download(
            repo_id,
            revision=small.name,
            allow_patterns=_weights(small),
            local_files_only=local_only,
        )
    )


def _snapshot(repo_id: str, revision: str | None) -> Path:
    try:
        return _fetch(repo_id, revision, local_only=True)
    except SourceResolveError:
        raise
    except Exception as cached_exc:  # the hub raises several not-found types
        if _offline():
            raise SourceResolveError(
                f"hf:{repo_id}{'@' + revision if revision else ''}: not in the local Hugging "
                f"Face cache and HF_HUB_OFFLINE is set ({type(cached_exc).__name__})"
            ) from cached_exc
    try:
        return _fetch(repo_id, revision, local_only=False)
    except SourceResolveError:
        raise
    except Exception as exc:
        raise SourceResolveError(f"hf:{repo_id}: download failed ({exc})") from exc


def resolve(spec: str, *, base: Path | None = None) -> Source:
    """A Source for `spec`; a relative folder is taken relative to `base` (the manifest's)."""
    if spec.startswith(HF_PREFIX):
        repo_id, _, revision = spec.removeprefix(HF_PREFIX).partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise SourceResolveError(f"{spec!r}: expected hf:org/name[@revision]")
        folder = _snapshot(repo_id, revision or None)
        return Source(spec, folder.absolute(), repo_id, revision or None, folder.name)
    folder = Path(spec).expanduser()
    if not folder.is_absolute() and base is not None:
        folder = base / folder
    if not folder.is_dir():
        raise SourceResolveError(f"{folder}: no such folder")
    return Source(spec, folder.absolute())
