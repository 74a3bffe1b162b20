"""What each step hands the next: one frozen dataclass per step's output.

Each writes its own record into its step's folder (`records.py`) and reads it back; the
next steps' cache keys are computed from its fields (`keys.py`), never from the names
of the record's entries. Prefect stores them as task results in JSON (its serializer
writes a dataclass's fields with its class name and validates them back).

    ingest       -> IngestedData     the manifest (its folder is the data) and its sha256
    baseline     -> Baseline         the untrained model's score row
    each phase   -> PhaseOutput      its model, embedder, score rows
    embed_shard  -> ShardEmbeddings  one image shard's embeddings
    extraction   -> Extraction       the merged embeddings, submission.csv, the scores
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.records import Record, RecordedFile, Work, peek_record, write_record
from pipeline.scores import phase_rows
from tfrecords.manifest import MANIFEST_NAME, ShardSet

if TYPE_CHECKING:
    from phases.unit import PhaseResult  # imports Keras


@dataclass(frozen=True)
class ModelFile:
    """A saved Keras model and its sha256."""

    path: Path
    sha256: str


def shard_set_files(folder: Path, manifest: ShardSet, prefix: str = "") -> dict[str, Path]:
    """A shard set's manifest and every shard, for a record: it vouches for all of them, so
    a shard damaged or deleted between runs is found (by sha256) before the next run trusts
    it, and rewritten. Costs one read of the shards per run (about 0.2 s per 128 MB)."""
    return {f"{prefix}manifest": folder / MANIFEST_NAME,
            **{f"{prefix}shards/{shard.file}": folder / shard.file for shard in manifest.shards}}


def _write(work: Work, output: dict, files: dict[str, Path]) -> Record:
    return write_record(work.folder, work.key, output, files, work.version, work.key_parts)


@dataclass(frozen=True)
class IngestedData:
    """The ingested data: its manifest (whose folder holds the shards, or with
    `storage.read_shards: direct`, `shards_at`, the file naming the gs:// folder that
    TensorFlow reads them from) and the manifest's sha256, which keys every later step."""

    manifest: Path
    manifest_sha256: str
    shards_at: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.manifest.parent

    @classmethod
    def write(cls, work: Work, folder: Path, manifest: ShardSet) -> "IngestedData":
        """Record the shard set of `manifest` in `folder` (the step's own or an ingested source)."""
        return cls.from_record(_write(work, {}, shard_set_files(folder, manifest)))

    @classmethod
    def write_direct(cls, work: Work, shards_at: Path) -> "IngestedData":
        """Record a manifest whose shards stay in the bucket, named by `shards_at`."""
        return cls.from_record(_write(work, {}, {"manifest": work.folder / MANIFEST_NAME, "shards_at": shards_at}))

    @classmethod
    def from_record(cls, record: Record) -> "IngestedData":
        shards_at = record.files.get("shards_at")
        return cls(record.files["manifest"].path, record.files["manifest"].sha256, shards_at and shards_at.path)


@dataclass(frozen=True)
class Baseline:
    """The untrained model's score row (phase "baseline", epoch 0)."""

    row: dict

    @classmethod
    def write(cls, work: Work, row: dict) -> "Baseline":
        return cls.from_record(_write(work, {"row": row}, {}))

    @classmethod
    def from_record(cls, record: Record) -> "Baseline":
        return cls(record.output["row"])


@dataclass(frozen=True)
class PhaseOutput:
    """A finished phase: `model` (what the next phase starts from), for a classifier
    `embedder` (images -> the features it was scored with), one score row per epoch, the
    final split's scores (None when the data has none), the epoch it resumed after (None:
    from scratch) and what the phase kind adds (`extra`, e.g. siamese's `train_views`)."""

    phase: str
    model: ModelFile
    rows: list[dict]
    embedder: ModelFile | None = None
    final_scores: dict | None = None
    resumed_after_epoch: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def final_model(self) -> ModelFile:
        """The model that embeds the final split if this phase is the last: its embedder when it
        has one (a classifier's: images -> features, not class probabilities), else its model."""
        return self.embedder or self.model

    def scored_rows(self, final_split: str) -> list[dict]:
        """The score rows, the last one extended with the scores of the final split
        (`test_mar_at_10`, ...), measured once at the end of the phase."""
        return phase_rows(self.rows, self.final_scores, final_split)

    @classmethod
    def write(cls, work: Work, result: "PhaseResult") -> "PhaseOutput":
        output = {"phase": result.name, "rows": result.rows, "final_scores": result.final_scores,
                  "resumed_after_epoch": result.resumed_after_epoch, "extra": result.extra}
        files = {"model": result.model_path}
        if result.embedder_path is not None:
            files["embedder"] = result.embedder_path
        return cls.from_record(_write(work, output, files))

    @classmethod
    def from_record(cls, record: Record) -> "PhaseOutput":
        def model(name: str) -> ModelFile | None:
            file: RecordedFile | None = record.files.get(name)
            return file and ModelFile(file.path, file.sha256)

        output = record.output
        return cls(output["phase"], model("model"), output["rows"], model("embedder"), output["final_scores"],
                   output["resumed_after_epoch"], output.get("extra", {}))


@dataclass(frozen=True)
class ShardEmbeddings:
    """The embeddings of one image shard (`image_shard`, of set `split`): a folder of
    embedding shards whose manifest is `manifest`."""

    split: str
    image_shard: str
    manifest: Path
    manifest_sha256: str

    @property
    def folder(self) -> Path:
        return self.manifest.parent

    @classmethod
    def write(cls, work: Work, split: str, image_shard: str, manifest: ShardSet) -> "ShardEmbeddings":
        record = _write(work, {"split": split, "image_shard": image_shard}, shard_set_files(work.folder, manifest))
        return cls.from_record(record)

    @classmethod
    def from_record(cls, record: Record) -> "ShardEmbeddings":
        manifest = record.files["manifest"]
        return cls(record.output["split"], record.output["image_shard"], manifest.path, manifest.sha256)


@dataclass(frozen=True)
class Extraction:
    """The final split's embeddings (the folder of `embeddings_manifest`), `submission.csv`,
    the scores of split `split`, and the whitening they were ranked with (`whitening.npz`,
    when `evaluation.retrieval.whitening` asks for one)."""

    split: str
    scores: dict
    submission: Path
    embeddings_manifest: Path
    whitening: Path | None = None
    whitening_sha256: str | None = None

    @property
    def embeddings(self) -> Path:
        return self.embeddings_manifest.parent

    @classmethod
    def write(cls, work: Work, split: str, scores: dict, submission: Path, embeddings_dir: Path,
              embeddings: ShardSet, whitening: Path | None = None) -> "Extraction":
        files = {"submission": submission, **shard_set_files(embeddings_dir, embeddings, "embeddings/")}
        if whitening is not None:
            files["whitening"] = whitening
        return cls.from_record(_write(work, {"split": split, "scores": scores}, files))

    @classmethod
    def from_record(cls, record: Record) -> "Extraction":
        whitening = record.files.get("whitening")
        return cls(record.output["split"], record.output["scores"], record.files["submission"].path,
                   record.files["embeddings/manifest"].path, *((whitening.path, whitening.sha256) if whitening else ()))


STEP_OUTPUTS = {"ingest": IngestedData, "baseline": Baseline, "phase": PhaseOutput, "embed_shard": ShardEmbeddings,
                "extraction": Extraction}


def recorded_output(work: Work):
    """The output in `work`'s record, its paths resolved here, its files unchecked: for a
    record just checked or written (a cached result may hold another machine's paths)."""
    return STEP_OUTPUTS[work.kind].from_record(peek_record(work.folder))
