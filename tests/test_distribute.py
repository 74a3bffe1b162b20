"""runtime.strategy, runtime.precision, runtime.jit_compile: tf.distribute strategies, mixed precision, XLA.

The strategies run in real processes (`tests/run_phase.py`): logical CPU devices and
collective ops can only be set up before TensorFlow starts, and a strategy is chosen
once per process. MobileNetV3Small at 32 px keeps every run to seconds.
"""

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, tiny_pipeline

from phases.config import PipelineConfig, RuntimeConfig

RUN_PHASE = Path(__file__).parent / "run_phase.py"
# Adam's first steps move each weight by about the learning rate whatever its gradient's
# size, so a difference in the last bits of a near-zero gradient becomes one of ~lr. The
# phase compared trains the backbone's last block and the head only (larger gradients).
PHASE = {"name": "last", "kind": "classification", "unfreeze": "from", "unfreeze_from": "expanded_conv_10",
         "learning_rate": 1e-3, "epochs": 2}
HEAD = {"name": "head", "kind": "classification", "unfreeze": "none", "learning_rate": 1e-3, "epochs": 2}  # traces fastest
SIAMESE = {"name": "siamese", "kind": "siamese", "projection_dim": 16, "labels_per_batch": 4, "views_per_label": 3,
           "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 2}]}


def config(data_dir: Path, phase: dict = PHASE, **runtime) -> dict:
    """`phase` alone on a deterministic MobileNetV3Small at 32 px, in graph mode; `dropout: 0`,
    so that the replicas' dropout masks (drawn per replica) are no difference between one
    device and two."""
    return tiny_pipeline(data_dir, {
        "model": {"architecture": "MobileNetV3Small", "dropout": 0.0},
        "phases": [phase],
        "runtime": {"seed": 3, "eager": False, **runtime},
    }, phases=(phase["name"],))


def start(tmp_path: Path, name: str, settings: dict, data_dir: Path, work_dir: Path, tf_config: dict | None = None,
          **arguments) -> subprocess.Popen:
    """`tests/run_phase.py` on `settings`' phase in a new process (TF_CONFIG only when given)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"config": settings, "data_dir": str(data_dir), "work_dir": str(work_dir),
                                "phase": settings["phases"][0]["name"], "previous": None, **arguments}))
    environment = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    if tf_config is not None:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, str(RUN_PHASE), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environment)


def result(process: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def files_in(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def weights(path: str) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(path, safe_mode=True, compile=False).weights]


# --- settings, resolution, chief -------------------------------------------------------------


def test_runtime_settings_are_validated_together():
    from pydantic import ValidationError

    assert RuntimeConfig().model_dump(include={"strategy", "precision", "jit_compile"}) == {
        "strategy": "auto", "precision": "float32", "jit_compile": "auto"}
    assert RuntimeConfig(strategy="tpu", precision="mixed_bfloat16", jit_compile=True).jit_compile is True
    assert RuntimeConfig(jit_compile=False, deterministic=True).jit_compile is False
    for settings, message in [
        ({"jit_compile": True, "deterministic": True}, "jit_compile: true and deterministic: true do not go together"),
        ({"jit_compile": True, "eager": True}, "set one of them to false"),
        ({"strategy": "tpu", "precision": "mixed_float16"}, "TPUs compute in bfloat16"),
        ({"strategy": "horovod"}, "Input should be 'auto', 'default', 'mirrored', 'multi_worker' or 'tpu'"),
    ]:
        with pytest.raises(ValidationError, match=message):
            RuntimeConfig(**settings)


def test_auto_resolves_from_tf_config_and_devices_and_the_chief_follows_tf_config():
    from phases.distribute import chief_task, cluster_workers, resolve_strategy, tf_config_chief

    two = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})}
    one = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})}
    assert cluster_workers(two) == 2 and cluster_workers(one) == 1 and cluster_workers({}) == 0
    assert resolve_strategy("auto", two) == "multi_worker"
    assert resolve_strategy("auto", one) == resolve_strategy("auto", {}) == "default"  # no TPU, no GPU here
    assert resolve_strategy("mirrored", two) == "mirrored"
    with pytest.raises(ValueError, match="TF_CONFIG is not a JSON object"):
        cluster_workers({"TF_CONFIG": "worker=a:1"})
    assert chief_task("worker", 0, {"worker": ["a", "b"]}) and not chief_task("worker", 1, {"worker": ["a", "b"]})
    assert chief_task("chief", 0, {"chief": ["c"], "worker": ["a"]})
    assert not chief_task("worker", 0, {"chief": ["c"], "worker": ["a"]})
    assert chief_task(None, None, {})
    # The same rule from TF_CONFIG alone (the flow's, before any strategy waits for its workers).
    assert not tf_config_chief(two) and tf_config_chief(one) and tf_config_chief({})
    with pytest.raises(ValueError, match="TF_CONFIG is not a JSON object"):
        tf_config_chief({"TF_CONFIG": "[1]"})


def test_a_process_keeps_the_strategy_it_made_first(monkeypatch):
    import tensorflow as tf

    from phases import distribute

    monkeypatch.setattr(distribute, "_created", None)
    strategy = distribute.runtime_strategy(RuntimeConfig(strategy="default"))
    assert strategy is tf.distribute.get_strategy() and distribute.runtime_strategy(RuntimeConfig()) is strategy
    with pytest.raises(RuntimeError, match="already runs under 'default'.*run this config in a new process"):
        distribute.runtime_strategy(RuntimeConfig(strategy="mirrored"))
    assert distribute.is_chief(strategy) and not distribute.needs_static_shapes(strategy)


def test_training_batches_have_a_static_batch_dimension_and_the_same_batches_on_every_iteration(ingested):
    """What a TPU strategy gets (`needs_static_shapes`): every training batch full (64 train
    images in batches of 24: the last 16 dropped), while evaluation reads every image; and
    what a one-host strategy gets: the same batches each time Keras iterates the epoch."""
    import keras
    import tensorflow as tf

    from phases.classification import training_batches
    from phases.distribute import alike_every_iteration
    from phases.scoring import embed_split

    settings = config(ingested)
    settings = PipelineConfig.model_validate({**settings, "data": {**settings["data"], "batch_size": 24}})
    make = partial(training_batches, settings.phases[0], settings, ingested, "category_id", 0)
    static, dynamic = make(True), make(False)
    assert static.element_spec[0].shape.as_list() == [24, 32, 32, 3] and static.element_spec[1].shape.as_list() == [24]
    assert dynamic.element_spec[0].shape.as_list() == [None, 32, 32, 3]
    first = [labels.tolist() for _, labels in static.as_numpy_iterator()]
    assert [len(labels) for labels in first] == [24, 24]
    assert [len(labels) for _, labels in dynamic.as_numpy_iterator()] == [24, 24, 16]

    # Keras iterates an epoch's dataset twice under a strategy (first to build the model): the
    # readers reshuffle on every iteration, the wrapped dataset repeats its first one.
    assert [labels.tolist() for _, labels in static.as_numpy_iterator()] != first
    wrapped = alike_every_iteration(partial(make, True), tf.distribute.MirroredStrategy(["/cpu:0"]))
    assert wrapped.element_spec == static.element_spec
    assert [labels.tolist() for _, labels in wrapped.as_numpy_iterator()] == first
    assert [labels.tolist() for _, labels in wrapped.as_numpy_iterator()] == first
    assert not isinstance(alike_every_iteration(partial(make, True), tf.distribute.get_strategy()), type(wrapped))

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()])
    embedded = embed_split(model, ingested, "test_index", 32, 4, verify=False)  # 15 images: the last batch of 3 kept
    assert len(embedded.vectors) == len(embedded.image_ids) == 15


# --- precision (in this process: the policy is set back to float32) ---------------------------


@pytest.fixture
def policy():
    from phases.distribute import set_precision

    yield set_precision
    set_precision("float32")


def test_mixed_precision_keeps_probabilities_embeddings_and_losses_float32(policy, tmp_path):
    """mixed_float16 (what a GPU run uses; CPUs run it too): the classifier's probabilities and the
    projection's embeddings are float32 layers, the optimizer scales the loss, and a checkpoint
    and a final model load back with the same dtypes under the float32 policy."""
    import keras

    from phases.checkpoints import latest_checkpoint, load_model, save_checkpoint, save_model
    from phases.config import ModelConfig, SiamesePhase
    from phases.losses import compile_for_schedule, schedule_plan
    from phases.model import build_backbone, build_classifier, build_projection

    policy("mixed_float16")
    classifier = build_classifier(build_backbone(ModelConfig(architecture="MobileNetV3Small", weights="none"), 32), 3, 0.2)
    assert classifier.get_layer("expanded_conv_1_expand").compute_dtype == "float16"
    assert classifier.output.dtype == "float32"
    phase = SiamesePhase.model_validate({**SIAMESE, "margin_schedule": [
        {"margin": 0.5, "learning_rate": 1e-3, "epochs": 1}, {"margin": 0.25, "learning_rate": 1e-4, "epochs": 1}]})
    projection = build_projection(8, 4, "mildnet", 6)
    compile_for_schedule(projection, phase, jit_compile=False)
    assert isinstance(projection.optimizer, keras.optimizers.LossScaleOptimizer)
    assert projection.get_layer("projection_hidden").compute_dtype == "float16" and projection.output.dtype == "float32"
    features = np.random.default_rng(0).normal(size=(24, 8)).astype("float32")
    labels = np.repeat(np.arange(6), 4)
    loss = projection.fit(features, labels, batch_size=24, verbose=0, shuffle=False).history["loss"][-1]
    assert np.isfinite(loss)
    schedule_plan(projection, phase, 1)
    assert projection.loss.margin == 0.25 and float(projection.optimizer.learning_rate) == pytest.approx(1e-4)
    assert projection.predict(features, verbose=0).dtype == np.float32
    save_checkpoint(tmp_path / "checkpoints", 1, projection, {"rows": []})
    save_model(classifier, tmp_path / "classifier.keras")

    # A resumed phase sets its policy before it loads its checkpoint (Keras wraps the optimizer
    # of a mixed_float16 model only: under float32 it would skip the saved loss-scale state).
    policy("float32")
    policy("mixed_float16")
    resumed = latest_checkpoint(tmp_path / "checkpoints").model
    assert isinstance(resumed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert resumed.get_layer("projection_hidden").compute_dtype == "float16" and resumed.output.dtype == "float32"
    assert resumed.loss.margin == 0.25 and float(resumed.optimizer.learning_rate) == pytest.approx(1e-4)
    saved = [np.asarray(v) for v in projection.optimizer.variables]
    assert len(resumed.optimizer.variables) == len(saved) > 10  # Adam's and the loss scale's
    assert all(np.array_equal(np.asarray(v), w) for v, w in zip(resumed.optimizer.variables, saved))
    policy("float32")  # a final model loads anywhere: its layers keep their policies
    loaded = load_model(tmp_path / "classifier.keras", compile=False)
    assert loaded.get_layer("expanded_conv_1_expand").compute_dtype == "float16" and loaded.output.dtype == "float32"
    assert loaded.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).dtype == np.float32


# --- strategies, in their own processes --------------------------------------------------------


def worker_pair(tmp_path: Path, name: str, settings: dict, data_dir: Path, work_dir: Path, **arguments):
    """Two MultiWorkerMirroredStrategy workers on 127.0.0.1, worker 0 the chief (no `chief` task)."""
    ports = {free_port()}
    while len(ports) < 2:
        ports.add(free_port())
    cluster = {"worker": [f"127.0.0.1:{port}" for port in sorted(ports)]}
    return [start(tmp_path, f"{name}-{index}", settings, data_dir, work_dir,
                  {"cluster": cluster, "task": {"type": "worker", "index": index}}, **arguments) for index in (0, 1)]


@pytest.fixture(scope="module")
def runs(ingested, tmp_path_factory):
    """Every run of the tests below, started at once: each process spends most of its time
    tracing in one Python thread, so on 2 cores several finish about as fast as one. The
    multi-worker chain (a pair of workers killed after epoch 1, then a pair that resumes)
    goes on in a thread. Yields {name: result or processes}; whatever still runs at the
    end is killed (a failed test's processes included)."""
    folder = tmp_path_factory.mktemp("distribute")
    settings = {
        "single": config(ingested, strategy="default"),
        "mirrored": config(ingested, strategy="mirrored"),
        "bf16": config(ingested, SIAMESE, strategy="mirrored", precision="mixed_bfloat16"),
        "multi_worker": config(ingested, HEAD, strategy="multi_worker"),
    }
    work = folder / "multi_worker"
    killed = worker_pair(folder, "killed", settings["multi_worker"], ingested, work, kill_after_epoch=1)
    processes = [*killed]
    started = {
        "single": start(folder, "single", settings["single"], ingested, folder / "single"),
        "mirrored": start(folder, "mirrored", settings["mirrored"], ingested, folder / "mirrored", logical_cpus=2),
        "bf16": start(folder, "bf16", settings["bf16"], ingested, folder / "bf16", logical_cpus=2),
    }
    processes += started.values()

    def multi_worker_chain() -> dict:
        chief, other = killed
        try:
            _, err = chief.communicate(timeout=300)
        finally:
            other.kill()  # it waits on the chief's collectives
            other.communicate()
        after_kill = files_in(work)
        resumed = worker_pair(folder, "resumed", settings["multi_worker"], ingested, work)
        processes.extend(resumed)
        return {"killed_code": chief.returncode, "killed_err": err, "after_kill": after_kill, "resumed": resumed,
                "work": work, "config": settings["multi_worker"]}

    with ThreadPoolExecutor(1) as pool:
        chain = pool.submit(multi_worker_chain)
        try:
            yield {**started, "multi_worker": chain}
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
            chain.exception()  # the thread is done before its processes are checked again
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.communicate()


@pytest.mark.slow
def test_mirrored_strategy_over_two_cpus_scores_as_one_device(runs):
    """The same phase on one device and mirrored over two logical CPUs: each global batch of 16
    is split 8 + 8, the gradients are all-reduced, the head's BatchNormalization takes the
    statistics of the 16 (synchronised), and Keras trains on the same batches (the dataset
    yields the same batches on every iteration). Only the order of float32 sums differs
    (per-replica partial sums, then the all-reduce): ~1e-7 relative per sum, grown to ~1e-5
    in the loss over 8 Adam steps (measured: 4e-6, then 8e-5). The tolerances leave 10x
    room and are far below what a real difference makes (per-replica statistics, a
    loss scaled by the replica count, other batches: >1e-2 in the loss)."""
    one, two = result(runs["single"]), result(runs["mirrored"])
    assert len(one["rows"]) == len(two["rows"]) == 2
    for expected, got in zip(one["rows"], two["rows"]):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-3)
        for key, value in expected.items():
            if key not in ("loss", "train_seconds"):  # scores: ranks and counts over a few queries
                assert got[key] == pytest.approx(value, abs=1e-6), (got["epoch"], key)
    assert two["final_scores"] == pytest.approx(one["final_scores"], abs=1e-6)
    # Weights: within a tenth of the learning rate (no Adam step went another way; measured
    # <= 1.3e-5), relatively 1e-4 for the head's BatchNormalization statistics (~50: the
    # synchronised E[x^2] - E[x]^2 against one device's two-pass moments, measured 3e-6).
    for a, b in zip(weights(one["model_path"]), weights(two["model_path"])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_siamese_phase_trains_in_mixed_bfloat16_mirrored_over_two_cpus(runs):
    """Phase 4 in bfloat16 (as on TPUs; CPUs compute it too), its label-balanced PyDataset
    batches split across two replicas: the loss is finite, the scores are computed, and the
    final embedder computes in bfloat16 but gives float32 embeddings."""
    done = result(runs["bf16"])
    assert all(np.isfinite(row["loss"]) and row["loss"] > 0 for row in done["rows"])
    assert all(row["n_queries"] == 3 and "mar_at_10" in row for row in done["rows"])
    assert done["final_scores"]["n_queries"] == 5

    from phases.checkpoints import load_model

    embedder = load_model(Path(done["model_path"]), done["sha256"], compile=False)
    assert embedder.get_layer("expanded_conv_1_expand").compute_dtype == "bfloat16"
    assert embedder.output.dtype == "float32"
    vectors = embedder.predict(np.full((2, 32, 32, 3), 128, "float32"), verbose=0)
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_multi_worker_strategy_trains_on_two_processes_and_resumes_from_the_chiefs_checkpoint(runs, ingested):
    """Two workers on 127.0.0.1 (TF_CONFIG, worker 0 the chief) train one phase in one work
    folder. The chief is killed right after epoch 1's checkpoint, the other worker with it;
    both start again and resume after epoch 1. Only the chief ever wrote; both scored every
    eval image in order (their rows are equal, and equal the chief's model scored here)."""
    chain = runs["multi_worker"].result(timeout=600)
    assert chain["killed_code"] == -signal.SIGKILL, chain["killed_err"][-3000:]
    assert chain["after_kill"] == {"checkpoints/epoch-0000.json", "checkpoints/epoch-0000.keras"}
    chief, other = chain["resumed"]
    mine, theirs = result(chief), result(other)
    assert mine["resumed_after_epoch"] == theirs["resumed_after_epoch"] == 1
    assert [row["epoch"] for row in mine["rows"]] == [1, 2]
    assert mine["extra"] == {} and theirs["extra"] == {"chief": False} and theirs["sha256"] == ""
    assert files_in(chain["work"]) == {"checkpoints/epoch-0000.json", "checkpoints/epoch-0000.keras",
                                       "checkpoints/epoch-0001.json", "checkpoints/epoch-0001.keras", "model.keras",
                                       "embedder.keras"}
    for row, same in zip(mine["rows"], theirs["rows"]):
        assert {k: v for k, v in row.items() if k != "train_seconds"} == {k: v for k, v in same.items() if k != "train_seconds"}
    assert mine["final_scores"] == theirs["final_scores"]
    assert mine["final_scores"]["n_queries"] == 5  # every test query

    from phases.checkpoints import load_model
    from phases.classification import classifier_scorer
    from phases.scoring import score_split

    model = load_model(Path(mine["model_path"]), mine["sha256"], compile=False)
    settings = PipelineConfig.model_validate(chain["config"])
    here = score_split(classifier_scorer(model), settings, ingested, "test", "category_id")
    assert here == pytest.approx(mine["final_scores"], abs=1e-6)
