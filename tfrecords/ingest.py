"""`pvs ingest`: images to sharded TFRecords plus `manifest.json`, resumable.

Order of work: list the source, assign splits, refuse a file copied into two
splits, plan shards (deterministic, so a rerun plans the same shards); then, holding
the folder's lock, keep every shard already finished by an earlier run (file
present, sidecar present, same plan, same sha256), write the rest in parallel, then
write the manifest. An interrupted run leaves only whole shards and `.tmp` files,
which the next run sweeps.
"""

import json
import random
import re
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from tfrecords.copies import check_no_copies_across_splits
from tfrecords.errors import FolderInUseError, SourceError
from tfrecords.files import remove_stale_temporaries, sha256_file
from tfrecords.locks import hold_lock
from tfrecords.manifest import MANIFEST_NAME, ImageManifest, ShardEntry, SkippedImage, read_manifest, write_manifest
from tfrecords.options import IngestOptions
from tfrecords.shard_writer import (
    PARTS_FOLDER,
    PlannedImage,
    PlannedShard,
    ShardOutcome,
    sidecar_path,
    write_shard,
)
from tfrecords.sources import SourceImage, check_outside_source, scan_source
from tfrecords.splits import EVAL_GROUPS, SPLITS, SplitPlan, assign_splits

# Upper bound of a record's bytes besides the image and its id: TFRecord framing (16)
# plus the Example's feature keys, tags, lengths and int values (~150).
RECORD_OVERHEAD = 192
# Held while an ingestion writes the folder; names the holder (`pid N on HOST, since T`).
LOCK_NAME = "ingest.lock"
SHARD_NAME = re.compile(r"^(?P<split>[a-z_]+)-\d{5}-of-\d{5}\.tfrecord$")


def ingest(
    source: str | Path, out_dir: str | Path, options: IngestOptions, progress: bool = True, source_name: str | None = None
) -> ImageManifest:
    """Ingest `source` (CSV or image folder) into `out_dir`; returns the manifest.
    `source_name` is what the manifest records as the source (default: `source`), e.g.
    the gs:// URL of a source staged on local disk.

    Everything that can refuse the source runs before anything is written; the writing
    holds `out_dir/ingest.lock`, so a second ingestion into the folder stops at once."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SourceError(f"{out}: exists and is not a folder; give a folder for the shards (new or ingested before)")
    check_outside_source(source, out)
    images, split_plan = split_source(source, options)
    check_no_copies_across_splits(images, split_plan.splits, options.workers, source)
    products = {name: i for i, name in enumerate(sorted({image.product for image in images}))}
    categories = {name: i for i, name in enumerate(sorted({image.category for image in images if image.category}))}
    shards = plan_shards(images, split_plan.splits, products, categories, options)

    with hold_lock(out / LOCK_NAME, lambda holder: FolderInUseError(
        f"{out}: another ingestion is using this folder ({holder}); wait for it to end, "
        "or give this ingestion another output folder"
    )):
        outcomes = _write_shards(out, shards, options, progress)
        manifest = ImageManifest(
            source=source_name or str(source),
            options=options.model_dump(exclude={"workers"}),
            counts={split: sum(o.records for o in outcomes if o.split == split) for split in SPLITS},
            products=products,
            categories=categories,
            distractor_products=split_plan.distractor_products,
            eval_only_categories=_eval_only_categories(images, split_plan.splits),
            shards=[ShardEntry(file=o.file, split=o.split, records=o.records, bytes=o.bytes, sha256=o.sha256)
                    for o in outcomes],
            skipped=[SkippedImage(image_id=i, reason=r) for o in outcomes for i, r in o.skipped],
        )
        write_manifest(out, manifest)
    return manifest


def _write_shards(out: Path, shards: list[PlannedShard], options: IngestOptions, progress: bool) -> list[ShardOutcome]:
    """Each planned shard's outcome, in plan order: kept from an earlier run when it can be
    trusted, written otherwise; stray files of killed or differently planned runs removed."""
    (out / PARTS_FOLDER).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    remove_stale_temporaries(out / PARTS_FOLDER)
    finished = {shard.file: outcome for shard in shards if (outcome := finished_outcome(out, shard))}
    todo = [shard for shard in shards if shard.file not in finished]
    images_in = {shard.file: len(shard.images) for shard in shards}
    with tqdm(
        total=sum(images_in.values()),
        initial=sum(images_in[name] for name in finished),
        unit="img",
        desc=f"ingest {out.name}",
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        for outcome in _write_all(todo, out, options):
            finished[outcome.file] = outcome
            bar.update(images_in[outcome.file])
    _remove_unplanned_shards(out, {shard.file for shard in shards})
    return [finished[shard.file] for shard in shards]


def split_source(source: str | Path, options: IngestOptions) -> tuple[list[SourceImage], SplitPlan]:
    """The images of `source` and the split of each; errors name the source."""
    images = scan_source(source)
    try:
        return images, assign_splits(images, options.val_fraction, options.test_fraction, options.seed)
    except SourceError as error:
        raise SourceError(f"{source}: {error}") from None


def split_counts(source: str | Path, options: IngestOptions) -> dict[str, int]:
    """Images per split that ingesting `source` would give, without opening an image:
    read from the manifest when `source` is an ingested folder already."""
    if (Path(source) / MANIFEST_NAME).is_file():
        return read_manifest(source, ImageManifest).counts
    return dict(Counter(split_source(source, options)[1].splits))


def _eval_only_categories(images: list[SourceImage], splits: list[str]) -> list[str]:
    """Categories with val or test products but no train product (retrieval is open-set:
    allowed, but phases 1-3 never learn to classify them)."""
    trained = {image.category for image, split in zip(images, splits) if split == "train"}
    return sorted({image.category for image in images if image.category is not None} - trained)


def plan_shards(
    images: list[SourceImage],
    splits: list[str],
    products: dict[str, int],
    categories: dict[str, int],
    options: IngestOptions,
) -> list[PlannedShard]:
    """Cut each split into shards of at most `options.shard_size` bytes of images.

    Records are shuffled (seeded) before cutting so that a shard mixes products:
    readers interleave a few shards at a time, and sorted shards would feed a
    batch with one product only.
    """
    planned = []
    for split in SPLITS:
        members = [_planned_image(image, products, categories) for image, s in zip(images, splits) if s == split]
        random.Random(f"{options.seed}:{split}").shuffle(members)
        groups: list[list[PlannedImage]] = []
        size = 0
        for image in members:
            record_size = max(image.size, 0) + len(image.image_id.encode("utf-8")) + RECORD_OVERHEAD
            if not groups or (size + record_size > options.shard_size and groups[-1]):
                groups.append([])
                size = 0
            groups[-1].append(image)
            size += record_size
        planned += [
            PlannedShard(file=f"{split}-{i:05d}-of-{len(groups):05d}.tfrecord", split=split, images=tuple(group))
            for i, group in enumerate(groups)
        ]
    return planned


def _planned_image(image: SourceImage, products: dict[str, int], categories: dict[str, int]) -> PlannedImage:
    try:
        stat = image.path.stat()
        size, mtime_ns = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime_ns = -1, 0  # the writer lists it as missing or unreadable
    return PlannedImage(
        path=str(image.path),
        image_id=image.image_id,
        product_id=products[image.product],
        category_id=categories.get(image.category, -1),
        size=size,
        mtime_ns=mtime_ns,
    )


def finished_outcome(out: Path, shard: PlannedShard) -> ShardOutcome | None:
    """The outcome of an earlier run's write of this very shard, if it can be trusted."""
    sidecar, shard_path = sidecar_path(out, shard.file), out / shard.file
    if not (sidecar.is_file() and shard_path.is_file()):
        return None
    try:
        outcome = ShardOutcome(**json.loads(sidecar.read_text()))
    except (ValueError, TypeError):
        return None
    if outcome.plan_digest != shard.digest() or outcome.bytes != shard_path.stat().st_size:
        return None
    if sha256_file(shard_path) != outcome.sha256:
        return None
    outcome.skipped = [tuple(pair) for pair in outcome.skipped]
    return outcome


def _write_all(todo: list[PlannedShard], out: Path, options: IngestOptions):
    """Yield each shard's outcome as it finishes; in parallel when workers > 1.

    Threads, not processes: reading, decoding (Pillow) and hashing release the GIL,
    and threads need no `if __name__ == "__main__"` guard in the caller's script
    nor a fork of a process that may already run TensorFlow.
    """
    workers = min(options.workers, len(todo))
    if workers <= 1:
        for shard in todo:
            yield write_shard(shard, str(out), options.strict, options.max_image_pixels)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        futures = [
            pool.submit(write_shard, shard, str(out), options.strict, options.max_image_pixels) for shard in todo
        ]
        try:
            for future in _as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _as_completed(futures: list[Future], poll_seconds: float = 1.0) -> Iterator[Future]:
    """`futures` as they finish, waited for in slices of `poll_seconds`: a wait without a
    timeout blocks the main thread in a lock that a signal taken by another thread never
    wakes, so Ctrl-C would wait for the next shard to finish."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=poll_seconds, return_when=FIRST_COMPLETED)
        yield from done


def _remove_unplanned_shards(out: Path, planned: set[str]) -> None:
    """Delete shards an earlier run planned differently, so the folder matches the manifest."""
    for path in out.glob("*.tfrecord"):
        if SHARD_NAME.match(path.name) and path.name not in planned:
            path.unlink()
            sidecar_path(out, path.name).unlink(missing_ok=True)


def summary(manifest: ImageManifest) -> str:
    """The lines `pvs ingest` prints: counts per split, shards, skipped files by reason."""
    lines = [
        (f"{sum(manifest.counts.values())} images of {len(manifest.products)} products"
         f" ({len(manifest.categories)} categories) in {len(manifest.shards)} shards"),
        "  " + ", ".join(f"{split} {count}" for split, count in manifest.counts.items()),
    ]
    if manifest.distractor_products:
        lines.append(f"  {len(manifest.distractor_products)} single-image eval products kept as index distractors")
    for group in EVAL_GROUPS:
        if manifest.counts.get(f"{group}_index") and not manifest.has_queries(group):
            lines.append(
                f"  warning: {group} has index images but no query (no {group} product has 2 or more images); "
                f"a run cannot score {group}"
            )
    if manifest.eval_only_categories:
        names = manifest.eval_only_categories
        listing = ", ".join(names[:10]) + (", ... (all in manifest.json)" if len(names) > 10 else "")
        lines.append(
            f"  {len(names)} {'category' if len(names) == 1 else 'categories'} only in val/test, never trained on "
            f"(allowed: retrieval is open-set): {listing}"
        )
    if manifest.skipped:
        reasons = Counter(item.reason.split(":")[0] for item in manifest.skipped)
        listing = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        lines.append(f"  skipped {len(manifest.skipped)} file(s) ({listing}); listed in manifest.json")
    return "\n".join(lines)
