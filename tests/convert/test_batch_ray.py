"""The Ray executor against a local Ray instance started here: same report, same resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_hf import tiny_llama

from llorch.convert.batch import convert_batch, plan_from_dirs

ray = pytest.importorskip("ray")


@pytest.fixture
def local_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))  # inherited by workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_executor_isolates_and_resumes(tmp_path: Path, local_ray: None) -> None:
    from llorch.convert.batch.ray_executor import RayExecutor

    src = tmp_path / "src"
    tiny_llama(src / "good")
    bad = tiny_llama(src / "bad", seed=2) / "config.json"
    bad.write_text(json.dumps({**json.loads(bad.read_text()), "architectures": ["NopeForLM"]}))
    events: list[dict[str, Any]] = []
    plan = plan_from_dirs([src], ["f16", "q4_0"])
    report = convert_batch(plan, tmp_path / "out", executor=RayExecutor(), on_event=events.append)

    jobs = {j.id: j for j in report.jobs}
    assert not report.ok and jobs["bad"].error_type == "UnsupportedArchitectureError"
    assert [o["outtype"] for o in jobs["good"].outputs] == ["f16", "q4_0"]
    assert (tmp_path / "out" / "good-60K-Q4_0.gguf").is_file()
    assert (tmp_path / "out" / "good-60K-Q4_0.provenance.json").is_file()

    events.clear()
    again = convert_batch(plan, tmp_path / "out", executor=RayExecutor(), on_event=events.append)
    assert {(e["job"], e["outtype"]) for e in events if e["event"] == "skip"} == {
        ("good", "f16"),
        ("good", "q4_0"),
    }
    assert [j.id for j in again.failed] == ["bad"]
