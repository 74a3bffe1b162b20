"""Write one planned shard: the unit of work of the parallel ingestion.

Runs in worker processes, so it imports neither TensorFlow nor the ingestion
plan logic. The shard appears under its final name only when complete; its
sidecar (counts, digest, skipped files) is written just before that rename, so a
shard file with a matching sidecar is a finished shard.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfrecords.errors import ImageError
from tfrecords.files import atomic_writer, write_text_atomic
from tfrecords.images import ImageCheck, check_image, image_format
from tfrecords.record_format import encode_example, write_record

PARTS_FOLDER = ".parts"
# Raised with each change to what a record holds, so that ingesting again rewrites the
# shards of an older format instead of keeping them. 2: `image/orientation` added.
RECORD_VERSION = 2


@dataclass(frozen=True)
class PlannedImage:
    path: str
    image_id: str
    product_id: int
    category_id: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class PlannedShard:
    file: str
    split: str
    images: tuple[PlannedImage, ...]

    def digest(self) -> str:
        """Changes when the shard's planned content (or a source file, or RECORD_VERSION) changes."""
        text = json.dumps([RECORD_VERSION, self.file, self.split, [asdict(image) for image in self.images]])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class ShardOutcome:
    file: str
    split: str
    plan_digest: str
    records: int = 0
    bytes: int = 0
    sha256: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)


class _HashingWriter:
    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)


def sidecar_path(out_dir: Path, shard_file: str) -> Path:
    return out_dir / PARTS_FOLDER / f"{shard_file}.json"


def write_shard(shard: PlannedShard, out_dir: str, strict: bool, max_pixels: int) -> ShardOutcome:
    """Write `shard` into `out_dir`; returns what went in and what was skipped."""
    out = Path(out_dir)
    outcome = ShardOutcome(file=shard.file, split=shard.split, plan_digest=shard.digest())
    with atomic_writer(out / shard.file) as handle:
        writer = _HashingWriter(handle)
        for image in shard.images:
            data, check = _read(image, max_pixels)
            if check.reason is not None:
                if strict:
                    raise ImageError(f"{image.path}: {check.reason} (run without --strict to skip it)")
                outcome.skipped.append((image.image_id, check.reason))
                continue
            record = encode_example(
                {
                    "image/encoded": data,
                    "image/format": image_format(data),
                    "image/orientation": check.orientation,
                    "image/id": image.image_id,
                    "product/id": image.product_id,
                    "category/id": image.category_id,
                    "split": shard.split,
                }
            )
            write_record(writer, record)
            outcome.records += 1
        outcome.bytes, outcome.sha256 = writer.size, writer.digest.hexdigest()
        write_text_atomic(sidecar_path(out, shard.file), json.dumps(asdict(outcome)))
    return outcome


def _read(image: PlannedImage, max_pixels: int) -> tuple[bytes, ImageCheck]:
    try:
        data = Path(image.path).read_bytes()
    except FileNotFoundError:
        return b"", ImageCheck("missing file")
    except OSError as error:
        return b"", ImageCheck(f"unreadable: {error.strerror or error}")
    return data, check_image(data, max_pixels)
