"""Publishing a batch's finished outputs to a Hugging Face model repo, with a model card.

One commit per source (huggingface_hub's create_commit): its GGUF files, their provenance
sidecars, the importance matrix the batch computed (if any) and README.md, the model card
generated from the provenance records of every output of that repo in the output folder.
Files the repo already has with the same content are left out (the Hub's paths-info gives an
LFS file's sha256 and a regular file's git blob id), so a push that was interrupted, or one run
again, uploads only what is missing. The repo must exist: creating it (and choosing private or
public) is the publisher's decision, not the converter's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from llorch.convert.batch import provenance
from llorch.convert.batch.errors import BatchError
from llorch.convert.imatrix import GGUF_SUFFIX
from llorch.gguf_header import read_header

Event = dict[str, Any]


class PushError(BatchError):
    """The hub refused the push (unknown repo, refused token) or could not be reached."""


@dataclass(frozen=True)
class PushResult:
    job: str
    repo: str
    uploaded: tuple[str, ...]
    unchanged: tuple[str, ...]
    commit: str | None  # None when there was nothing to upload

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "repo": self.repo,
            "uploaded": list(self.uploaded),
            "unchanged": list(self.unchanged),
            "commit": self.commit,
        }


def _git_blob_id(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)  # git's object id
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _gguf_facts(path: Path) -> dict[str, Any]:
    """The metadata llama.cpp and Ollama read first: architecture, name, context length (read
    without the vocabulary: gguf's reader takes seconds over a large one)."""
    fields = read_header(path).fields
    value = fields.get
    arch = value(gguf.Keys.General.ARCHITECTURE)
    return {
        "architecture": arch,
        "name": value(gguf.Keys.General.NAME),
        "size_label": value(gguf.Keys.General.SIZE_LABEL),
        "context_length": value(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch)),
        "license": value(gguf.Keys.General.LICENSE),
        "chat_template": value(gguf.Keys.Tokenizer.CHAT_TEMPLATE) is not None,
    }


def _row(record: Mapping[str, Any]) -> str:
    q = record.get("quality")
    size = f"{record['bytes'] / 2**20:.1f} MiB"
    cells = [f"[{record['file']}]({record['file']})", record["outtype"].upper(), size]
    if q:
        cells += [
            f"{q['kld_mean']:.5f}",
            f"{q['kld_p99']:.5f}",
            f"{q['top1']:.2%}",
            f"{q['ppl']:.4f} ({q['ppl_reference']:.4f})",
        ]
    else:
        cells += ["-", "-", "-", "reference" if record.get("from") is None else "-"]
    return "| " + " | ".join(cells) + " |"


def model_card(repo: str, records: Sequence[Mapping[str, Any]], out_dir: Path) -> str:
    """README.md for `repo`: source, license and base model carried over, one row per file
    (type, size, quality), how the files were made, and their GGUF metadata."""
    # the text outputs: a projector (outtype mmproj) is a row, not the model's facts
    text = [r for r in records if r.get("outtype") != "mmproj"] or list(records)
    first = text[0]
    source = first.get("source") or {}
    base = source.get("repo_id")
    facts = _gguf_facts(out_dir / first["file"])
    license_ = facts.get("license") or (first.get("options") or {}).get("overrides", {}).get(
        "license"
    )
    front = ["---", "library_name: gguf", "tags:", "- gguf", "- llorch"]
    if base:
        front += ["base_model:", f"- {base}"]
    if license_:
        front.append(f"license: {license_}")
    front.append("---")
    name = facts.get("name") or repo.split("/")[-1]
    lines = [*front, "", f"# {name} GGUF", ""]
    where = source.get("url") or source.get("spec")
    commit = source.get("commit")
    lines.append(
        f"GGUF files of [{base or where}]({where})"
        + (f" at commit `{commit}`" if commit else "")
        + ", converted and quantized with llorch."
    )
    lines += [
        "",
        "| File | Type | Size | KLD mean | KLD p99 | Top-1 agreement | PPL (reference) |",
        "|---|---|---|---|---|---|---|",
        *(_row(r) for r in sorted(records, key=lambda r: -int(r["bytes"]))),
        "",
    ]
    measured = [r for r in records if r.get("quality")]
    if measured:
        q = measured[0]["quality"]
        lines += [
            f"Quality is measured against the {q['reference'].upper()} file on "
            f"{q['tokens']} tokens of an evaluation text, as `llama-perplexity "
            "--kl-divergence` measures it: KLD is the KL divergence of each file's "
            "next-token distribution from the reference's (mean and 99th percentile; 0 is "
            "identical), top-1 agreement how often both put the same token first, PPL the "
            "perplexity of the text under each.",
            "",
        ]
    imatrix = next((r["imatrix"] for r in records if r.get("imatrix")), None)
    versions = first.get("versions") or {}
    lines += ["## How these files were made", ""]
    lines.append(
        f"- llorch {versions.get('llorch')} (converter {versions.get('converter')}), "
        f"llama.cpp through llama-cpp-python {versions.get('llama_cpp_python')}, gguf-py "
        f"{versions.get('gguf')}"
    )
    if imatrix:
        datasets = ", ".join(imatrix.get("datasets") or []) or "?"
        lines.append(
            f"- importance matrix `{Path(str(imatrix['file'])).name}`: {imatrix['entries']} "
            f"entries from {imatrix['chunks']} chunks of {imatrix['chunk_size']} tokens of "
            f"{datasets}"
            + (
                f" (sha256 `{imatrix['calibration_sha256']}`)"
                if imatrix.get("calibration_sha256")
                else ""
            )
        )
    lines.append("- each file's `.provenance.json` lists the source files' sha256 and options")
    lines += [
        "",
        "## GGUF metadata",
        "",
        f"- `general.architecture`: {facts['architecture']}",
        f"- `general.name`: {facts['name']}",
        f"- `general.size_label`: {facts['size_label']}",
        f"- context length: {facts['context_length']}",
        f"- chat template: {'yes' if facts['chat_template'] else 'no'}",
        "",
        "## Use",
        "",
        "```sh",
        f"llama-server -hf {repo}:{text[-1]['outtype'].upper()}",
        f"ollama run hf.co/{repo}:{text[-1]['outtype'].upper()}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _remote(api: Any, repo: str, paths: list[str], revision: str) -> dict[str, Any]:
    infos = api.get_paths_info(repo, paths, expand=True, revision=revision)
    return {i.path: i for i in infos if hasattr(i, "blob_id")}


def _same(path: Path, remote: Any) -> bool:
    if remote is None or remote.size != path.stat().st_size:
        return False
    if remote.lfs is not None:
        return bool(remote.lfs.sha256 == _sha256(path))
    return bool(remote.blob_id == _git_blob_id(path))


def push_job(
    out_dir: str | os.PathLike[str],
    job: str,
    repo: str,
    *,
    token: str | None = None,
    revision: str = "main",
    on_event: Callable[[Event], None] | None = None,
) -> PushResult:
    """One commit to `repo` with `job`'s finished outputs in `out_dir` (and the model card)."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    out = Path(out_dir)
    records = provenance.read_sidecars(out)
    mine = [r for (j, _), r in records.items() if j == job]
    if not mine:
        raise PushError(f"{out}: no finished output of job {job!r} to push")
    files = [out / str(r["file"]) for r in mine]
    files += [provenance.sidecar_path(f) for f in files]
    kept = {
        out / Path(str(r["imatrix"]["file"])).name
        for r in mine
        if r.get("imatrix", {}).get("computed")
    }
    files += sorted(p for p in kept if p.name.endswith(GGUF_SUFFIX) and p.is_file())
    card = model_card(repo, mine, out)
    api = HfApi(token=token)
    emit = on_event or (lambda _: None)
    try:
        remote = _remote(api, repo, [f.name for f in files] + ["README.md"], revision)
        todo = [f for f in files if not _same(f, remote.get(f.name))]
        card_bytes = card.encode()
        readme = remote.get("README.md")
        card_same = (
            readme is not None
            and readme.blob_id
            == hashlib.sha1(b"blob %d\0" % len(card_bytes) + card_bytes).hexdigest()
        )
        unchanged = tuple(sorted(f.name for f in files if f not in todo))
        if not todo and card_same:
            emit({"event": "push", "job": job, "repo": repo, "uploaded": [], "commit": None})
            return PushResult(job, repo, (), unchanged, None)
        ops = [CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(f)) for f in todo]
        if not card_same:
            ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card_bytes))
        info = api.create_commit(
            repo,
            ops,
            commit_message=f"{job}: {', '.join(sorted(str(r['outtype']) for r in mine))}",
            revision=revision,
        )
    except RepositoryNotFoundError as exc:
        raise PushError(
            f"{repo}: no such model repo on {api.endpoint}, or the token may not see it "
            "(create the repo first, e.g. `hf repo create`)"
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        why = "the token was refused" if status in (401, 403) else "the hub refused the push"
        raise PushError(f"{repo}: {why} (HTTP {status}): {exc}".splitlines()[0]) from exc
    except OSError as exc:
        raise PushError(f"{repo}: cannot reach {api.endpoint} ({exc})") from exc
    uploaded = tuple(op.path_in_repo for op in ops)
    event = {"event": "push", "job": job, "repo": repo, "uploaded": list(uploaded)}
    emit({**event, "commit": info.oid})
    return PushResult(job, repo, uploaded, unchanged, info.oid)
