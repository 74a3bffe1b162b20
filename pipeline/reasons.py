"""Why a step is reused or runs, as `pvs run` logs it:

    top: reused: key equal
    full: runs: config changed (phase)
    siamese: runs: input changed (parent)
    extraction: runs: version raised (1 -> 2)
    baseline: runs: first time

A step runs when its folder holds no trustworthy record of its key. Its earlier record
(in its own folder, or for a step whose folder is named by its key, the newest sibling
folder of the same step) says what its key was made of (`version`, `key_parts`):
comparing the two names the parts that changed.
"""

from pathlib import Path

from pipeline.records import RECORD_NAME, Record, Work, peek_record

# Parts of keys (`keys.py`) that come from the step's config; the others are digests of
# what the step reads (the source, the data, the parent model, the image shard).
CONFIG_PARTS = {"options", "read_shards", "phase", "number", "settings", "set"}


def reason_to_run(work: Work) -> str:
    """Why `work`, which has no trustworthy record in its folder, runs: 'first time',
    'unfinished', 'version raised (1 -> 2)', 'config changed (phase)', 'input changed
    (parent)', 'its record does not match its files', ..."""
    earlier = _earlier_record(work)
    if earlier is None:
        return "unfinished" if work.folder.is_dir() and any(work.folder.iterdir()) else "first time"
    if earlier.key == work.key:
        return "its record does not match its files"
    if earlier.version is None or not earlier.key_parts:
        return "key changed (its earlier record predates step versions)"
    if earlier.version != work.version:
        verb = "raised" if earlier.version < work.version else "changed"
        return f"version {verb} ({earlier.version} -> {work.version})"
    changed = sorted(part for part in work.key_parts.keys() | earlier.key_parts.keys()
                     if work.key_parts.get(part) != earlier.key_parts.get(part))
    config = [part for part in changed if part in CONFIG_PARTS]
    inputs = [part for part in changed if part not in CONFIG_PARTS]
    said = [f"config changed ({', '.join(config)})" if config else "", f"input changed ({', '.join(inputs)})" if inputs else ""]
    return ", ".join(filter(None, said)) or "run folder changed"


def _earlier_record(work: Work) -> Record | None:
    """The newest record of the same step: in its folder, or in a sibling folder of the same
    name but another key (`NN-NAME-<key>`, `extraction-<key>`, `<shard>-<key>`)."""
    own = peek_record(work.folder)
    if own is not None or not work.folder.name.endswith(f"-{work.key[:12]}"):
        return own
    stem = work.folder.name[: -len(work.key[:12]) - 1]
    siblings = [path.parent for path in work.folder.parent.glob(f"{stem}-*/{RECORD_NAME}")
                if len(path.parent.name) == len(stem) + 13]
    for folder in sorted(siblings, key=_modified, reverse=True):
        record = peek_record(folder)
        if record is not None:
            return record
    return None


def _modified(folder: Path) -> float:
    try:
        return (folder / RECORD_NAME).stat().st_mtime
    except OSError:
        return 0.0
