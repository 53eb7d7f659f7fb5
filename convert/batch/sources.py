"""Batch sources: a local folder, or `hf:org/name[@revision]` from the Hugging Face cache.

A repo is looked up in the local cache first (huggingface_hub's offline path); only when that
fails and the hub may be used (`HF_HUB_OFFLINE` unset) is it downloaded, and then only the
files conversion reads. The snapshot folder's name is the commit, recorded as provenance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llorch.convert.batch.errors import SourceResolveError

HF_PREFIX = "hf:"
# What conversion reads (llorch.convert.cache._READ and the weights); nothing else is fetched.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]


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


def _snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        # The same patterns as the download: huggingface_hub (1.x) checks a cached snapshot
        # against the repo's file listing it cached, and without them a snapshot fetched here
        # (no .bin, no README) counts as incomplete, so the hub would be asked again and an
        # offline rerun refused.
        return Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS, local_files_only=True
            )
        )
    except Exception as cached_exc:  # the hub raises several not-found types
        if _offline():
            raise SourceResolveError(
                f"hf:{repo_id}{'@' + revision if revision else ''}: not in the local Hugging "
                f"Face cache and HF_HUB_OFFLINE is set ({type(cached_exc).__name__})"
            ) from cached_exc
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS))
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
