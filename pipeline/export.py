"""`pvs export`: a finished run's final embedder as files served outside this project:
images in, L2-normalised embeddings out, the run's preprocessing and test-time
augmentation inside (`phases.serving`).

    pvs export runs/demo --format savedmodel --out exported/demo    # TF Serving's model folder
    pvs export runs/demo --format tflite --quantize int8 --out exported/demo-lite
    pvs export runs/demo --format keras --out exported/demo-keras

* `savedmodel`: DIR/N/, the next version number (1 in a new folder): TF Serving serves a
  model folder's highest version and loads a new one as it appears, so an export adds a
  version rather than replacing the one being served. Signatures `serving_default`
  (encoded JPEG or PNG bytes, stood upright by their EXIF orientation in the graph) and
  `embed_prepared` (float32 images prepared by the client); the whitening, when the run
  has one, in N/assets.extra/ (beside the model, not loaded by it).
* `tflite`: DIR/model.tflite, prepared images in (TFLite decodes no JPEG), at `--quantize`
  float32, float16 or int8 (calibrated on the run's train images).
* `keras`: DIR/model.keras, prepared images in; loads with `keras.saving.load_model(path,
  safe_mode=True)` once `phases.serving` is imported (its layers are registered there).

Either of the last two refuses to replace an export unless `force`; a folder holds one
format. Every export is written under a temporary name, checked, then renamed into place,
and `DIR/export.json` is written last (a folder is complete only with it): the format, each
file's sha256, the run, its final model's sha256, the image size, the embedding dimension,
the test-time augmentation, `evaluation.retrieval` and the whitening file (applied by
whoever searches: the export gives unwhitened embeddings, as the run's embeddings folder
holds), and the checks' figures.

Parity: on `check_images` images of the final split (`pipeline.export_checks`), the
export's embeddings must be within PARITY_TOLERANCE cosine distance of the run's own, or
the export fails and nothing is renamed into place; a quantised TFLite model is measured
instead, on the whole final split (MAR@10 of both, top-10 agreement).
"""

import itertools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from phases.checkpoints import load_model, save_model
from phases.serving import INPUT, OUTPUT, PREPARED_SIGNATURE, embedding_model, serving_archive
from phases.tflite import convert, tflite_embedder
from pipeline.export_checks import FinalSplit, Sample, parity, quantisation_costs, sample, split_batches
from pipeline.outputs import folder_problem
from pipeline.run_root import recorded_path
from pipeline.search import FinishedRun, open_run
from tfrecords.errors import UserError
from tfrecords.files import sha256_file, write_bytes_atomic, write_text_atomic
from tfrecords.locks import hold_lock
from tfrecords.manifest import ImageManifest, read_manifest

FORMATS = ("savedmodel", "tflite", "keras")
MODEL_FILES = {"tflite": "model.tflite", "keras": "model.keras"}
MANIFEST_NAME = "export.json"
LOCK_NAME = ".export.lock"  # one export at a time in a folder (TF Serving skips names that are not numbers)
WHITENING_NAME = "whitening.npz"
SAVEDMODEL_EXTRAS = "assets.extra"  # SavedModel's folder for files its loader leaves alone
PARITY_TOLERANCE = 1e-4  # largest 1 - cos to the run's embeddings (float32 exports differ by ~1e-7)


class ExportError(UserError):
    """An export that cannot be written where asked, or that does not embed as the run did."""


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict  # what export.json holds

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST_NAME


def export_run(run_dir: Path, out_dir: Path, format: str, quantize: str = "float32", check_images: int = 32,
               calibration_images: int = 200, force: bool = False) -> ExportResult:
    """Export the final model of the finished run `run_dir` into `out_dir` as `format` (see
    the module docstring); `quantize` (`phases.tflite.PRECISIONS`) for tflite only. Raises
    RunNotSearchableError for a folder that is not a finished run, ExportError for a folder
    that cannot take the export or an export that breaks parity."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if format not in FORMATS:
        raise ExportError(f"--format {format!r}: give one of {', '.join(FORMATS)}")
    if quantize != "float32" and format != "tflite":
        raise ExportError(f"--quantize {quantize}: only a tflite export is quantised; drop it or use --format tflite")
    run = open_run(run_dir)
    problem = folder_problem(out_dir)
    if problem:
        raise ExportError(f"--out {out_dir}: cannot write the export there ({problem}); give another folder")
    summary = json.loads((run_dir / "run.json").read_text())  # open_run checked what it names
    final = FinalSplit.of(run, recorded_path(summary["embeddings"], summary, run_dir))
    with hold_lock(out_dir / LOCK_NAME, lambda holder: ExportError(
            f"--out {out_dir}: another export is writing there ({holder}); wait for it to finish")):
        destination = _destination(out_dir, format, force)
        model = embedding_model(load_model(run.model_path, run.model_sha256, compile=False), run.test_time_augmentation)
        staging = out_dir / f".export-{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            images = sample(final, check_images, model.input_shape[1])
            distances, quantisation = _write(format, model, staging, images, final, quantize, calibration_images)
            if quantisation is None:
                _refuse_broken_parity(distances, images)
            whitening = Path(SAVEDMODEL_EXTRAS if format == "savedmodel" else "", WHITENING_NAME)  # in the export
            copied = _copy_whitening(summary, run_dir, staging / whitening)
            files = _move_into_place(staging, destination, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        manifest = {
            "format": format,
            **({"version": int(destination.name)} if format == "savedmodel" else {}),
            **({"precision": quantize} if format == "tflite" else {}),
            "files": files,
            **_description(run_dir, run, model, format),
            "whitening": (destination / whitening).relative_to(out_dir).as_posix() if copied else None,
            # A quantised model's distances are measured, not checked (`quantisation` says what it costs).
            "parity": {"split": run.index.split, "images": len(images.image_ids), "max_cosine_distance": distances,
                       "tolerance": None if quantisation else PARITY_TOLERANCE},
            **({"quantisation": quantisation} if quantisation else {}),
        }
        write_text_atomic(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1))
    return ExportResult(out_dir, manifest)


def _description(run_dir: Path, run: FinishedRun, model, format: str) -> dict:
    """What export.json says of the run and of the model's inputs and output."""
    size, dim = model.input_shape[1], model.output_shape[-1]
    prepared = f"float32 [batch, {size}, {size}, 3] in [0, 255], prepared as tfrecords.preprocess.prepare"
    return {
        "run_dir": str(run_dir.resolve()),
        "final_model": str(run.model_path),
        "final_model_sha256": run.model_sha256,
        "image_size": size,
        "embedding_dim": dim,
        "test_time_augmentation": run.test_time_augmentation,
        "retrieval": run.index.retrieval.model_dump(mode="json"),
        "inputs": ({"serving_default": "encoded JPEG or PNG bytes, tf.string [batch]", PREPARED_SIGNATURE: prepared}
                   if format == "savedmodel" else prepared),
        "output": f"{OUTPUT}: float32 [batch, {dim}], L2-normalised",
    }


def _destination(out_dir: Path, format: str, force: bool) -> Path:
    """Where the export goes: out_dir/N for a SavedModel (the next version), else out_dir;
    ExportError when out_dir holds an export it must not replace."""
    try:
        held = json.loads((out_dir / MANIFEST_NAME).read_text())["format"]
    except (OSError, ValueError, KeyError, TypeError):
        held = None
    if held is not None and held != format:
        raise ExportError(f"--out {out_dir}: holds a {held} export ({MANIFEST_NAME}); give another folder for {format}")
    if format == "savedmodel":
        versions = [int(path.name) for path in out_dir.glob("*") if path.is_dir() and path.name.isdigit()]
        return out_dir / str(max(versions, default=0) + 1)
    model_file = out_dir / MODEL_FILES[format]
    if model_file.exists() and not force:
        raise ExportError(f"--out {out_dir}: {model_file.name} exists already; give --force to replace it, "
                          "or another folder")
    return out_dir


def _write(format: str, model, staging: Path, images: Sample, final: FinalSplit, precision: str,
           calibration_images: int) -> tuple[dict[str, float], dict | None]:
    """Write the export into `staging` and embed `images` with it as its users will:
    ({what was checked: the largest 1 - cos to the run's embeddings}, a quantised model's costs or None)."""
    if format == "savedmodel":
        return _write_savedmodel(model, staging, images, final), None
    if format == "keras":
        return _write_keras(model, staging / MODEL_FILES["keras"], images, final), None
    return _write_tflite(model, staging, precision, calibration_images, images, final)


def _write_savedmodel(model, staging: Path, images: Sample, final: FinalSplit) -> dict[str, float]:
    import tensorflow as tf

    serving_archive(model).write_out(staging, verbose=False)
    signatures = tf.saved_model.load(str(staging)).signatures  # as TF Serving loads it

    def signature(name):
        return lambda chunk: signatures[name](**{INPUT: tf.constant(chunk)})[OUTPUT]

    return {"serving_default": parity(signature("serving_default"), images.encoded, final, images),
            PREPARED_SIGNATURE: parity(signature(PREPARED_SIGNATURE), images.prepared, final, images)}


def _write_keras(model, path: Path, images: Sample, final: FinalSplit) -> dict[str, float]:
    loaded = load_model(path, save_model(model, path), compile=False)  # as a user loads it: safe mode
    return {path.name: parity(lambda chunk: loaded(chunk, training=False), images.prepared, final, images)}


def _write_tflite(model, staging: Path, precision: str, calibration_images: int, images: Sample,
                  final: FinalSplit) -> tuple[dict[str, float], dict | None]:
    size = model.input_shape[1]
    train_images = read_manifest(final.run.index.data_dir, ImageManifest).counts.get("train", 0)
    calibration_images = min(calibration_images, train_images)
    if precision == "int8" and not calibration_images:
        raise ExportError(f"{final.run.index.data_dir}: no train images to calibrate int8 with; "
                          "export float16 or float32")

    def calibration():
        # Not sha256-checked (a large train split would be read whole for a few hundred images):
        # TFRecord's CRC still refuses a damaged record.
        batches = split_batches(final, "train", size, verify=False)
        return itertools.islice((image for batch in batches for image in batch["image"]), calibration_images)

    flatbuffer = convert(model, precision, staging, calibration if precision == "int8" else None)
    write_bytes_atomic(staging / MODEL_FILES["tflite"], flatbuffer)
    embed = tflite_embedder(flatbuffer)
    distances = {MODEL_FILES["tflite"]: parity(embed, images.prepared, final, images)}
    if precision == "float32":
        return distances, None
    costs = {"precision": precision, **quantisation_costs(embed, final, size)}
    return distances, costs | ({"calibration_images": calibration_images} if precision == "int8" else {})


def _refuse_broken_parity(distances: dict[str, float], images: Sample) -> None:
    """ExportError naming what broke the tolerance (a quantised model's distances are measures, not checks)."""
    for name, distance in distances.items():
        if not distance < PARITY_TOLERANCE:  # NaN too
            raise ExportError(
                f"{name}: embeds {len(images.image_ids)} images of the run's final split up to {distance:.2g} cosine "
                f"distance from the run's own embeddings (tolerance {PARITY_TOLERANCE:g}); nothing was written. "
                "The run's model, embeddings or data changed since it finished: run it again, then export")


def _copy_whitening(summary: dict, run_dir: Path, copy: Path) -> bool:
    """Copy the whitening that run.json (`summary`) names to `copy`, sha256 checked; whether it names one."""
    if not summary.get("whitening"):
        return False
    source = recorded_path(summary["whitening"], summary, run_dir)
    write_bytes_atomic(copy, source.read_bytes())
    if sha256_file(copy) != summary["whitening_sha256"]:
        raise ExportError(f"{source}: sha256 differs from run.json's; the file was altered. Run the extraction again")
    return True


def _move_into_place(staging: Path, destination: Path, out_dir: Path) -> dict[str, str]:
    """The checked files of `staging`, synced to disk, renamed into `destination` (a SavedModel's
    version folder as a whole); {their path relative to out_dir: sha256}."""
    for path in staging.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    if destination != out_dir:
        os.replace(staging, destination)
        return {path.relative_to(out_dir).as_posix(): sha256_file(path)
                for path in sorted(destination.rglob("*")) if path.is_file()}
    (out_dir / WHITENING_NAME).unlink(missing_ok=True)  # a replaced export's, when the new run has none
    files = {}
    for path in sorted(staging.iterdir()):
        os.replace(path, out_dir / path.name)
        files[path.name] = sha256_file(out_dir / path.name)
    return files


def render(result: ExportResult) -> str:
    """What `pvs export` prints: the files written, the parity figures and a quantised model's costs."""
    manifest = result.manifest
    where = result.out_dir / str(manifest["version"]) if "version" in manifest else result.out_dir
    lines = [f"wrote a {manifest['format']} export of {manifest['run_dir']} to {where}"
             + (f" (version {manifest['version']}: TF Serving serves a model folder's highest)" if "version" in manifest
                else "")]
    lines += [f"  {name}  sha256 {digest}" for name, digest in manifest["files"].items()]
    checked = manifest["parity"]
    figures = ", ".join(f"{distance:.2g} ({name})" for name, distance in checked["max_cosine_distance"].items())
    tolerance = (f" (measured, not checked: {manifest['precision']})" if checked["tolerance"] is None
                 else f" (tolerance {checked['tolerance']:g})")
    lines.append(f"parity with the run's embeddings of {checked['images']} {checked['split']} images: "
                 f"largest 1 - cos {figures}{tolerance}")
    quantisation = manifest.get("quantisation")
    if quantisation:
        mar = quantisation["mar_at_10"]
        lines.append(f"{quantisation['precision']} on the {quantisation['images']} images of the final split: "
                     f"MAR@10 {mar['quantised']:.4f} ({mar['float32']:.4f} in float32), recall@10 against float32 "
                     f"{quantisation['recall_at_10_against_float32']:.4f}, largest 1 - cos "
                     f"{quantisation['max_cosine_distance']:.2g}")
    lines.append(f"manifest: {result.manifest_path}")
    return "\n".join(lines)
