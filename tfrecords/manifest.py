"""Manifests: what a folder of shards holds, and the sha256 of every shard.

A manifest is the only way in to a shard folder: readers list shards from it and
check each shard against its digest before trusting it.
"""

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tfrecords.errors import ManifestError, ShardIntegrityError
from tfrecords.files import sha256_file, write_text_atomic

MANIFEST_NAME = "manifest.json"
# In an ingested folder without its shards: the URL of the folder that holds them (one line),
# which the reader then reads through TensorFlow's file systems (gs://, ...).
SHARDS_AT_NAME = "shards-at.txt"
SCHEMA_VERSION = 1


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ShardEntry(Frozen):
    """One shard file: its name inside the folder, split, record count, size and digest."""

    file: str
    split: str
    records: int
    bytes: int
    sha256: str


class SkippedImage(Frozen):
    image_id: str
    reason: str


class ShardSet(Frozen):
    """What every manifest has: a schema version, a kind and the shards."""

    schema_version: Literal[1] = SCHEMA_VERSION
    shards: list[ShardEntry]

    def shards_of(self, split: str) -> list[ShardEntry]:
        return [shard for shard in self.shards if shard.split == split]


class ImageManifest(ShardSet):
    """An ingested image folder (written by `pvs ingest`).

    `counts` is records per split; `products` and `categories` map the source's
    names to the int ids in the records; `skipped` lists every unusable file;
    `eval_only_categories` the categories of val or test that train lacks.
    """

    kind: Literal["images"] = "images"
    source: str
    options: dict
    counts: dict[str, int]
    products: dict[str, int]
    categories: dict[str, int]
    distractor_products: list[str]
    skipped: list[SkippedImage]
    eval_only_categories: list[str] = []  # absent from manifests written before it was added

    def has_queries(self, group: str) -> bool:
        """Whether eval group `group` (val or test) has query images to score."""
        return self.counts.get(f"{group}_query", 0) > 0


class EmbeddingManifest(ShardSet):
    """A folder of embedding shards: `dim`-d float32 vectors with their ids."""

    kind: Literal["embeddings"] = "embeddings"
    dim: int
    count: int
    # What the vectors were computed from (e.g. the model's sha256), so a cache can
    # tell whether it is still valid.
    metadata: dict = {}


def write_manifest(folder: Path, manifest: ShardSet) -> Path:
    path = Path(folder) / MANIFEST_NAME
    write_text_atomic(path, manifest.model_dump_json(indent=2) + "\n")
    return path


def read_manifest(folder: str | Path, model: type[ShardSet]) -> ShardSet:
    """Load and validate `folder/manifest.json` as `model`."""
    path = Path(folder) / MANIFEST_NAME
    if not Path(folder).is_dir():
        raise ManifestError(f"{folder}: no such folder; give a folder written by `pvs ingest`")
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest; is {folder} a folder written by `pvs ingest`?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error}); ingest again to rewrite it") from None
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema version {raw.get('schema_version')!r}; this version reads {SCHEMA_VERSION}"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ManifestError(f"{path}: not a valid {model.__name__}: {error}") from None


def shard_problem(folder: Path, shard: ShardEntry) -> str | None:
    """Why a shard cannot be trusted (missing, wrong size, wrong sha256), or None."""
    path = Path(folder) / shard.file
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != shard.bytes:
        return f"{size} bytes, the manifest says {shard.bytes} (truncated or altered)"
    digest = sha256_file(path)
    if digest != shard.sha256:
        return f"sha256 {digest[:12]}..., the manifest says {shard.sha256[:12]}... (altered)"
    return None


def verify_shards(folder: str | Path, shards: list[ShardEntry]) -> None:
    """Raise ShardIntegrityError naming every shard that does not match the manifest."""
    problems = [(shard.file, shard_problem(Path(folder), shard)) for shard in shards]
    bad = [f"{Path(folder) / name}: {problem}" for name, problem in problems if problem]
    if bad:
        raise ShardIntegrityError(
            "shard(s) do not match the manifest:\n  " + "\n  ".join(bad)
            + "\nIngest again into the same folder to rewrite them."
        )
