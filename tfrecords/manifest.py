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


# Per kind: the model, what such a folder is (for messages), and how it is written again.
KINDS = {
    "images": (ImageManifest, "a data folder written by `pvs ingest`", "ingest again into the folder to rewrite it"),
    "embeddings": (EmbeddingManifest, "an embeddings folder written by a run's extraction",
                   "run `pvs run` again on its run folder to rewrite it"),
}


def read_manifest(folder: str | Path, model: type[ShardSet] | None = None) -> ShardSet:
    """Load and validate `folder/manifest.json` as `model`, or (None) as the model its `kind`
    names (`pvs verify` takes either). Any problem is one ManifestError line saying what
    the file is and how to write it again."""
    path = Path(folder) / MANIFEST_NAME
    if not Path(folder).is_dir():
        raise ManifestError(f"{folder}: no such folder; give a folder written by `pvs ingest`")
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest; is {folder} a folder written by `pvs ingest`?")
    wanted = model.model_fields["kind"].default if model else None
    rewrite = KINDS[wanted or "images"][2]
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error}); {rewrite}") from None
    if not isinstance(raw, dict) or "schema_version" not in raw:
        shape = f"a JSON {type(raw).__name__}" if not isinstance(raw, dict) else "without schema_version"
        raise ManifestError(f"{path}: not a manifest ({shape}; a manifest is an object with schema_version, kind "
                            f"and shards); {rewrite}")
    if raw["schema_version"] != SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema version {raw['schema_version']!r}; this version reads {SCHEMA_VERSION}")
    kind = raw.get("kind", "images")  # `kind` has a default: a manifest may leave it out
    if kind not in KINDS:
        raise ManifestError(f"{path}: a manifest of unknown kind {kind!r}; this version reads {', '.join(KINDS)}")
    if wanted and kind != wanted:
        raise ManifestError(f"{path}: the manifest of {KINDS[kind][1]}, where {KINDS[wanted][1]} is wanted; "
                            "give such a folder")
    try:
        return KINDS[kind][0].model_validate(raw)
    except ValidationError as error:
        raise ManifestError(f"{path}: not a valid manifest of {KINDS[kind][1]} ({_problems(error)}); "
                            f"{KINDS[kind][2]}") from None


def _problems(error: ValidationError, shown: int = 3) -> str:
    """pydantic's errors on one line: `shards: Input should be a valid list; ...`, the first few."""
    problems = [f"{'.'.join(map(str, item['loc'])) or 'the file'}: {item['msg']}" for item in error.errors()]
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more


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
