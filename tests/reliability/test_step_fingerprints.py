"""A step's output may change only with its version (`pipeline/keys.py`, STEP_VERSIONS).

The reliability suite's reference run (a deterministic tiny run of every step) is
fingerprinted step by step and compared with `tests/step_fingerprints.json`, recorded
with the versions of that time. What is exact on every machine is compared exactly: the
record's shape (its output's entries and file names), the ingested shards' sha256s, the
record counts. Floats are compared within TOLERANCE, since TensorFlow's oneDNN rounds
differently on other CPUs. Re-record (after raising the version of each changed step) with

    PVS_RECORD_STEP_FINGERPRINTS=1 .venv/bin/python -m pytest tests/reliability/test_step_fingerprints.py
"""

import json
import os
from pathlib import Path

from pipeline.keys import STEP_VERSIONS
from tfrecords.manifest import EmbeddingManifest, read_manifest

FINGERPRINTS = Path(__file__).parents[1] / "step_fingerprints.json"
RECORD = "PVS_RECORD_STEP_FINGERPRINTS"
TOLERANCE = 2e-3  # relative to max(1, |value|): other CPUs round scores and losses differently
TIMINGS = ("seconds",)  # wall time differs run to run


def step_of(folder: Path) -> tuple[str, str]:
    """(kind, name) of a step's folder in a run."""
    if folder.name == "data":
        return "ingest", "ingest"
    if folder.parent.name == "embeddings":
        return "embed_shard", folder.name[:-13]
    if folder.name.startswith("extraction-"):
        return "extraction", "extraction"
    name = folder.name[3:-13]
    return ("baseline" if name == "baseline" else "phase"), name


def numbers(value, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON value, by its path; timings left out."""
    if isinstance(value, dict):
        return {path: number for key, item in value.items() for path, number in numbers(item, f"{prefix}{key}/").items()}
    if isinstance(value, list):
        return {path: number for index, item in enumerate(value) for path, number in numbers(item, f"{prefix}{index}/").items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not any(word in prefix for word in TIMINGS):
        return {prefix.rstrip("/"): float(value)}
    return {}


def fingerprint(folder: Path) -> dict:
    """What a step wrote, as far as it is the same on every machine (`exact`), and its numbers."""
    record = json.loads((folder / "result.json").read_text())
    kind, _ = step_of(folder)
    exact = {"output": sorted(record["output"]), "files": sorted(record["files"])}
    if kind == "ingest":
        exact["shards"] = {name: entry["sha256"] for name, entry in record["files"].items() if name != "manifest"}
    if kind in ("embed_shard", "extraction"):
        embeddings = folder / Path(record["files"]["manifest" if kind == "embed_shard" else "embeddings/manifest"]["path"]).parent
        stored = read_manifest(embeddings, EmbeddingManifest)
        exact["embeddings"] = {"dim": stored.dim, "count": stored.count,
                               "records": {shard.file: shard.records for shard in stored.shards}}
    return {"kind": kind, "exact": exact, "numbers": numbers(record["output"])}


def fingerprints(run_dir: Path) -> dict[str, dict]:
    folders = [path.parent for path in run_dir.rglob("result.json")]
    return {step_of(folder)[1]: fingerprint(folder) for folder in sorted(folders)}


def differences(found: dict, recorded: dict) -> list[str]:
    """What differs between a step's fingerprint and the recorded one, in words."""
    said = [f"{name} is {found['exact'][name]!r}, was {recorded['exact'].get(name)!r}"
            for name in found["exact"] if found["exact"][name] != recorded["exact"].get(name)]
    for path in sorted(found["numbers"].keys() | recorded["numbers"].keys()):
        now, then = found["numbers"].get(path), recorded["numbers"].get(path)
        if now is None or then is None or abs(now - then) > TOLERANCE * max(1.0, abs(then)):
            said.append(f"{path} is {now}, was {then}")
    return said


def test_no_step_output_changed_without_its_version_being_raised(reference):
    found = fingerprints(reference.run_dir)
    if os.environ.get(RECORD):
        FINGERPRINTS.write_text(json.dumps({"versions": STEP_VERSIONS, "steps": found}, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(FINGERPRINTS.read_text())
    again = f"re-record with {RECORD}=1 .venv/bin/python -m pytest {Path(__file__).relative_to(Path(__file__).parents[2])}"
    problems = []
    for name in sorted(found.keys() | recorded["steps"].keys()):
        step = found.get(name) or recorded["steps"][name]
        kind = step["kind"]
        version, was = STEP_VERSIONS[kind], recorded["versions"][kind]
        if name not in found or name not in recorded["steps"]:
            problems.append(f"step {name!r} ({kind}) is new or gone: {again}")
            continue
        changes = differences(found[name], recorded["steps"][name])
        if changes and version == was:
            problems.append(f"step {name!r}: its output changed ({'; '.join(changes[:5])}) and STEP_VERSIONS[{kind!r}] "
                            f"is still {version}: raise STEP_VERSIONS[{kind!r}] (pipeline/keys.py) and {again}")
        elif version != was:
            problems.append(f"STEP_VERSIONS[{kind!r}] is {version}, the fingerprints were recorded at {was}: {again}")
    assert not problems, "\n".join(sorted(set(problems)))
