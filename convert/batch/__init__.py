"""Batch conversion: many checkpoints to many GGUF types, each job in its own process,
resumable through provenance sidecars. convert_batch() is the library entry point."""

from llorch.convert.batch.api import BatchReport, JobReport, convert_batch
from llorch.convert.batch.errors import BatchError, ManifestError, SourceResolveError
from llorch.convert.batch.plan import JobSpec, Plan, load_manifest, plan_from_dirs

__all__ = [
    "BatchError",
    "BatchReport",
    "JobReport",
    "JobSpec",
    "ManifestError",
    "Plan",
    "SourceResolveError",
    "convert_batch",
    "load_manifest",
    "plan_from_dirs",
]
