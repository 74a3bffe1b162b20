"""Fetching a run for the commands that read one (`pvs report`, `compare`, `search`): a
remote run folder pulled into its local mirror, only the parts the command needs."""

import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.storage.remote import RemoteStorageError, missing_message, remote_listing_or_empty
from pipeline.storage.run_store import RunRoot
from pipeline.storage.shard_cache import StorageSettings
from tfrecords.manifest import MANIFEST_NAME

RUN_PARTS = ("model", "embeddings", "embeddings_manifest", "data")


def fetch_run(location: str, settings: StorageSettings, parts: Sequence[str] = ()) -> Path:
    """A run folder to read: a local folder as it is; a remote one pulled into its local
    mirror, which is returned: the files at its root (scores, run.json, run-config.yaml,
    charts), then each of `parts` the finished run.json names: "model" (the final model's
    step folder), "embeddings" (the extraction's), "embeddings_manifest" (only the
    embeddings' manifest), "data" (the ingested images, through the shard cache)."""
    root = RunRoot(location, settings)
    if root.remote is None:
        return root.local
    if not remote_listing_or_empty(root.remote):
        raise RemoteStorageError(missing_message(root.remote, "reading the run folder"))
    root.pull_loose_files()
    try:
        summary = json.loads((root.local / "run.json").read_text())
    except (OSError, ValueError):
        return root.local  # unfinished: the commands say so
    # The step folder in the mirror of a file or folder run.json names (by URL).
    steps = {key: (root.local / value[len(root.remote) + 1:]).parent for key, value in summary.items()
             if key in ("final_model", "embeddings") and isinstance(value, str) and value.startswith(root.remote + "/")}
    for part in parts:
        if part not in RUN_PARTS:
            raise ValueError(f"unknown part of a run {part!r}; one of {', '.join(RUN_PARTS)}")
        if part == "model" and "final_model" in steps:
            root.pull_finished(steps["final_model"])
        elif part == "embeddings" and "embeddings" in steps:
            root.pull_finished(steps["embeddings"])
        elif part == "embeddings_manifest" and "embeddings" in steps:
            root.pull_finished(steps["embeddings"], only=[f"embeddings/{MANIFEST_NAME}"])
        elif part == "data":
            root.pull_finished(root.local / "data")
    return root.local
