"""`hf:org/name@revision` sources downloaded through huggingface_hub's snapshot_download, from a
fake Hugging Face Hub on 127.0.0.1: the parts of the Hub's HTTP API snapshot_download uses.

What snapshot_download asks (huggingface_hub's _snapshot_download.py and file_download.py):
`GET /api/models/{repo}/revision/{revision}` for the commit (`sha`; older releases list the
files from its `siblings`), `GET /api/models/{repo}/tree/{commit}` for the files (newer
releases), then per file `HEAD` and `GET /{repo}/resolve/{commit}/{file}`, whose `X-Repo-Commit`
and `ETag` (`X-Linked-Etag` and `X-Linked-Size` for LFS files) it requires. huggingface_hub
reads HF_ENDPOINT and HF_HUB_OFFLINE when it is imported, so each run is a process of its own.

For `convert-batch --push` it also takes commits to the repos in `repos` (huggingface_hub's
create_commit: `POST /api/models/{repo}/paths-info/{rev}` for what the repo has,
`.../preupload/{rev}` for each file's upload mode, always "regular" here so the content comes
inline, base64, in the NDJSON of `.../commit/{rev}`), with `token` as the only accepted token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import gguf
import pytest
from tiny_hf import tiny_llama

from llorch.convert.batch import provenance as prov

REPO = "acme/tiny"
COMMIT = "f00d" * 10
REVISION = "v1"  # a tag: only the hub knows which commit it is
# Listed by the hub, never read by conversion: must not be downloaded.
NOT_READ = {"pytorch_model.bin": b"\x80\x02pickle" * 64, "README.md": b"# tiny\n"}


class FakeHub:
    """One model repo at one commit, reachable under REVISION and the commit itself."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str]] = []  # (method, path) in the order asked
        self.repos: dict[str, dict[str, bytes]] = {}  # pushable repos: path -> content
        self.commits: list[tuple[str, list[str]]] = []  # (repo, paths) of each commit
        self.token = "hf_write"
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects of the Hub

            def do_GET(self) -> None:
                hub.answer(self, body=True)

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_POST(self) -> None:
                hub.answer_post(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()

    def downloaded(self) -> set[str]:
        prefix = f"/{REPO}/resolve/{COMMIT}/"
        return {p.removeprefix(prefix) for m, p in self.requests if m == "GET" and prefix in p}

    @staticmethod
    def _lfs(name: str) -> bool:
        return name.endswith((".safetensors", ".bin"))

    def _entry(self, name: str) -> dict[str, Any]:
        data = self.files[name]
        # The Hub's oid is the git blob sha1; an LFS file also has its sha256, which the cache
        # names its blob by.
        entry: dict[str, Any] = {"type": "file", "path": name, "size": len(data)}
        entry["oid"] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if self._lfs(name):
            sha256 = hashlib.sha256(data).hexdigest()
            entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
        return entry

    def answer(self, request: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        self.requests.append((request.command, path))
        api = f"/api/models/{REPO}/"
        if path.startswith(api + "revision/"):
            if path.removeprefix(api + "revision/") not in (REVISION, COMMIT):
                return self._send(request, 404, b"{}", {"X-Error-Code": "RevisionNotFound"}, body)
            info = {
                "id": REPO,
                "modelId": REPO,
                "sha": COMMIT,
                "private": False,
                "siblings": [{"rfilename": name} for name in self.files],
            }
            return self._send(request, 200, json.dumps(info).encode(), {}, body)
        if path == api + f"tree/{COMMIT}":
            tree = [self._entry(name) for name in self.files]
            return self._send(request, 200, json.dumps(tree).encode(), {}, body)
        resolve = f"/{REPO}/resolve/"
        revision, _, name = path.removeprefix(resolve).partition("/")
        if path.startswith(resolve) and revision in (REVISION, COMMIT) and name in self.files:
            entry = self._entry(name)
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{entry["oid"]}"'}
            if "lfs" in entry:
                sha256 = entry["lfs"]["oid"]
                headers |= {"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(entry["size"])}
            return self._send(request, 200, self.files[name], headers, body)
        self._send(request, 404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)

    def answer_post(self, request: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(request.path).path)
        self.requests.append(("POST", path))
        data = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        if path == "/api/validate-yaml":
            return self._send(request, 200, b"{}", {}, True)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            message = "Invalid credentials in Authorization header"
            body = json.dumps({"error": message}).encode()
            return self._send(request, 401, body, {"X-Error-Message": message}, True)
        parts = path.removeprefix("/api/models/").split("/")
        repo, action = "/".join(parts[:2]), parts[2] if len(parts) > 2 else ""
        if repo not in self.repos:
            body = json.dumps({"error": "Repository not found"}).encode()
            return self._send(request, 404, body, {"X-Error-Code": "RepoNotFound"}, True)
        files = self.repos[repo]
        if action == "paths-info":
            asked = parse_qs(data.decode())["paths"]
            found = [self._repo_entry(name, files[name]) for name in asked if name in files]
            return self._send(request, 200, json.dumps(found).encode(), {}, True)
        if action == "preupload":
            asked = json.loads(data)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for f in asked]  # fmt: skip
            return self._send(request, 200, json.dumps({"files": modes}).encode(), {}, True)
        if action == "commit":
            paths = []
            for line in data.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    paths.append(item["value"]["path"])
            self.commits.append((repo, paths))
            oid = hashlib.sha1(repr(self.commits).encode()).hexdigest()
            answer = {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid}
            return self._send(request, 200, json.dumps(answer).encode(), {}, True)
        self._send(request, 404, b"{}", {"X-Error-Code": "EntryNotFound"}, True)

    def _repo_entry(self, name: str, data: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": name, "size": len(data)}
        entry["oid"] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if self._lfs(name) or name.endswith(".gguf"):  # as the Hub stores large binaries
            sha256 = hashlib.sha256(data).hexdigest()
            entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
        return entry

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        headers: dict[str, str],
        body: bool,
    ) -> None:
        request.send_response(status)
        for k, v in {"Content-Length": str(len(data)), **headers}.items():
            request.send_header(k, v)
        request.end_headers()
        if body:
            request.wfile.write(data)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    staging = tiny_llama(tmp_path / "staging")
    files = {p.name: p.read_bytes() for p in sorted(staging.iterdir())}
    served = FakeHub({**files, **NOT_READ})
    yield served
    served.stop()


def _convert_batch(tmp_path: Path, hub_url: str, *, offline: bool = False) -> dict[str, Any]:
    """`llorch convert-batch --json` in its own process, against the hub at `hub_url`; the
    report line."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_HOME")
    }
    env |= {
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(tmp_path / "hf"),
        "LLORCH_CACHE": str(tmp_path / "cache" / "gguf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    manifest = tmp_path / "batch.toml"
    manifest.write_text(f'outtypes = ["f16"]\n[[models]]\nsource = "hf:{REPO}@{REVISION}"\n')
    cmd = [sys.executable, "-m", "llorch.cli", "convert-batch", str(manifest), "--json"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["event"] == "report", done.stdout
    return dict(lines[-1])


def test_download_only_what_conversion_reads_and_record_the_hubs_commit(
    tmp_path: Path, hub: FakeHub
) -> None:
    report = _convert_batch(tmp_path, hub.url)
    assert hub.downloaded() == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert not [p for _, p in hub.requests if any(p.endswith(n) for n in NOT_READ)]
    assert ("GET", f"/api/models/{REPO}/revision/{REVISION}") in hub.requests

    (output,) = report["jobs"][0]["outputs"]
    assert not output["skipped"]
    source = output["source"]
    assert source["repo_id"] == REPO and source["revision"] == REVISION
    assert source["commit"] == COMMIT  # what the hub answered for the tag
    assert source["url"] == f"{hub.url}/{REPO}"
    snapshot = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert source["folder"] == str(snapshot / COMMIT)
    for name, digest in output["source_files"].items():
        assert hashlib.sha256(hub.files[name]).hexdigest() == digest, name
    reader = gguf.GGUFReader(tmp_path / "out" / output["file"])
    revision = reader.get_field(prov.KEY_REVISION)
    assert revision is not None and revision.contents() == COMMIT
    url = reader.get_field(gguf.Keys.General.SOURCE_URL)
    assert url is not None and url.contents() == f"{hub.url}/{REPO}"


@pytest.mark.slow
def test_a_rerun_resolves_from_the_cache_and_skips(tmp_path: Path, hub: FakeHub) -> None:
    first = _convert_batch(tmp_path, hub.url)["jobs"][0]["outputs"][0]
    hub.requests.clear()

    # The hub is up: the cached snapshot is used without asking it anything.
    again = _convert_batch(tmp_path, hub.url)["jobs"][0]["outputs"][0]
    assert hub.requests == []
    assert again["skipped"] and again["sha256"] == first["sha256"]

    hub.stop()  # gone: nothing listens on its port any more
    for offline in (False, True):
        gone = _convert_batch(tmp_path, hub.url, offline=offline)["jobs"][0]["outputs"][0]
        assert gone["skipped"], offline
        assert gone["source"]["commit"] == COMMIT and gone["sha256"] == first["sha256"]


def test_only_the_shards_the_index_names_are_downloaded(tmp_path: Path) -> None:
    """A repo with the same weights twice (Mistral's releases: consolidated.safetensors beside
    the shards) costs one copy: the weights come from the index."""
    from safetensors import safe_open

    staging = tiny_llama(tmp_path / "staging")
    files = {p.name: p.read_bytes() for p in sorted(staging.iterdir())}
    with safe_open(staging / "model.safetensors", "np") as weights:
        weight_map = {name: "model.safetensors" for name in weights.keys()}  # noqa: SIM118
    index = {"metadata": {}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    files["consolidated.safetensors"] = files["model.safetensors"]
    hub = FakeHub(files)
    try:
        report = _convert_batch(tmp_path, hub.url)
    finally:
        hub.stop()
    assert hub.downloaded() == {
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    (output,) = report["jobs"][0]["outputs"]
    assert not output["skipped"] and output["source"]["commit"] == COMMIT


def _push_batch(tmp_path: Path, hub_url: str, repo: str, token: str) -> subprocess.CompletedProcess:
    """`llorch convert-batch` of a local tiny model to f16 and q4_k_m with `--push repo`."""
    src = tmp_path / "src"
    if not src.exists():
        tiny_llama(src, name="acme/tiny")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env |= {
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_TOKEN": token,
        "LLORCH_CACHE": str(tmp_path / "cache" / "gguf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    manifest = tmp_path / "batch.toml"
    manifest.write_text(
        f'outtypes = ["f16", "q4_k_m"]\nlicense = "apache-2.0"\n[[models]]\nsource = "{src}"\n'
    )
    cmd = [sys.executable, "-m", "llorch.cli", "convert-batch", str(manifest), "--json"]
    cmd += ["--out", str(tmp_path / "out"), "--push", repo]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_push_uploads_outputs_and_card_then_only_what_is_missing(
    tmp_path: Path, hub: FakeHub
) -> None:
    repo = "acme/tiny-GGUF"
    hub.repos[repo] = {}
    done = _push_batch(tmp_path, hub.url, repo, hub.token)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    made = sorted(p.name for p in out.iterdir() if p.name.endswith((".gguf", ".json")))
    assert len(made) == 4  # two GGUF files and their provenance sidecars
    assert sorted(hub.repos[repo]) == sorted([*made, "README.md"])
    for name in made:
        assert hub.repos[repo][name] == (out / name).read_bytes(), name
    card = hub.repos[repo]["README.md"].decode()
    assert "license: apache-2.0" in card and "- gguf" in card
    assert "| Q4_K_M |" in card and "| F16 |" in card and "`general.architecture`: llama" in card
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    [pushed] = [e for e in events if e["event"] == "push"]
    assert sorted(pushed["uploaded"]) == sorted([*made, "README.md"]) and pushed["commit"]
    assert len(hub.commits) == 1

    # run again: nothing new to upload, no commit
    again = _push_batch(tmp_path, hub.url, repo, hub.token)
    assert again.returncode == 0, again.stderr
    assert len(hub.commits) == 1
    # a file the repo lost (or never got) is the only one uploaded
    q4 = next(n for n in made if n.endswith("Q4_K_M.gguf"))
    del hub.repos[repo][q4]
    hub.repos[repo][made[0]] = b"changed on the hub"
    resumed = _push_batch(tmp_path, hub.url, repo, hub.token)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(hub.commits[-1][1]) == sorted([q4, made[0]])
    assert hub.repos[repo][made[0]] == (out / made[0]).read_bytes()


def test_push_refused_token_and_missing_repo_are_clear_errors(tmp_path: Path, hub: FakeHub) -> None:
    hub.repos["acme/tiny-GGUF"] = {}
    refused = _push_batch(tmp_path, hub.url, "acme/tiny-GGUF", "hf_wrong")
    assert refused.returncode == 1
    assert "acme/tiny-GGUF: the token was refused (HTTP 401)" in refused.stderr
    assert hub.repos["acme/tiny-GGUF"] == {} and hub.commits == []
    missing = _push_batch(tmp_path, hub.url, "acme/nowhere", hub.token)
    assert missing.returncode == 1
    assert "acme/nowhere: no such model repo" in missing.stderr
    events = [json.loads(line) for line in missing.stdout.splitlines() if line.startswith("{")]
    assert [e["repo"] for e in events if e["event"] == "push_error"] == ["acme/nowhere"]
    # the outputs themselves were made and kept
    assert events[-1]["event"] == "report" and events[-1]["ok"] is True
