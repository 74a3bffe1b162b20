"""Where the phases train: the tf.distribute strategy and the Keras precision policy of a run.

`runtime_strategy(runtime)` resolves `runtime.strategy` and creates the strategy once per
process: MultiWorkerMirroredStrategy configures TensorFlow's collective ops, which is
only possible before TensorFlow initialises its devices, and a TPU system is initialised
once. A later call gets the same object; one asking for another kind raises. Models,
optimizers and metrics are built in `strategy.scope()` by the phases; Keras' `fit` then
splits each (global) batch across the replicas and all-reduces the gradients.

Scoring does not go through the strategy: `local_model(model)` is a view of the same
layers that Keras runs on this process's own device, so `predict_on_batch` returns
one output row per input row, in order. (Under a strategy, `predict_on_batch` hands the
whole batch to every replica and concatenates their outputs: each row twice with two
replicas; under MultiWorkerMirroredStrategy it also all-gathers across workers, a
collective every worker would have to join.)

Keras 3's `fit` needs two small allowances under tf.distribute, both here: under a
multi-worker strategy, a `reduce` that takes what `fit` passes it (see
`_MultiWorkerMirroredStrategy`); under a one-host strategy, training datasets that
yield the same batches each time they are iterated (`alike_every_iteration`). Under
several replicas the BatchNormalization layers that train synchronise their batch
statistics (`synchronize_batch_norm`), so a global batch is normalised as on one device.

`set_precision(precision)` sets Keras' global dtype policy. It is process-wide, so it is
set on every run, float32 included: a process that ran a mixed-precision config must
not build the next config's models in 16 bits.
"""

import json
import os

import keras
import tensorflow as tf

from phases.config import RuntimeConfig

_created: tuple[str, tf.distribute.Strategy] | None = None  # (kind, strategy) of this process


def _tf_config(environ=None) -> dict:
    """TF_CONFIG as a mapping; {} when it is unset or blank."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not a JSON object with a cluster: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"TF_CONFIG is not a JSON object with a cluster: {text[:80]}")  # noqa: TRY004 (a bad value, as above)
    return document


def cluster_workers(environ=None) -> int:
    """How many tasks that train (workers and a chief) TF_CONFIG names; 0 without TF_CONFIG."""
    cluster = _tf_config(environ).get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def tf_config_chief(environ=None) -> bool:
    """Whether TF_CONFIG makes this process its cluster's chief (`chief_task`'s rule), read
    without TensorFlow: a MultiWorkerMirroredStrategy, once made, waits for every worker of
    the cluster to connect, so the role must be known before. No TF_CONFIG: the chief."""
    document = _tf_config(environ)
    if not document:
        return True
    try:
        task = document.get("task", {})
        return chief_task(task.get("type"), int(task.get("index", 0)), document.get("cluster", {}))
    except (ValueError, AttributeError, TypeError) as error:
        raise ValueError(f"TF_CONFIG is not a JSON object with a cluster and a task: {error}") from None


def _tpu_resolver():
    """A TPU cluster resolver when this machine reaches a TPU, else None.

    The resolver finds a Cloud TPU from the environment (TPU_NAME, TPU_CONFIG, GKE's
    KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS); on a TPU VM, whose TPU is local, set TPU_NAME=local."""
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver("local" if os.environ.get("TPU_NAME") == "local" else None)
    except (ValueError, RuntimeError, ImportError):  # no TPU name, no TPU VM, no TPU support
        return None


def resolve_strategy(name: str, environ=None) -> str:
    """`auto` -> the kind this machine calls for; other names are returned as they are.

    TF_CONFIG is read before any device is listed: MultiWorkerMirroredStrategy must be
    created before TensorFlow initialises its devices, which listing them does. Several
    workers come before several local GPUs: MultiWorkerMirroredStrategy uses each
    worker's GPUs too, while independent MirroredStrategies would train separate models."""
    if name != "auto":
        return name
    if _tpu_resolver() is not None:
        return "tpu"
    if cluster_workers(environ) > 1:
        return "multi_worker"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` takes what Keras 3's `fit` gives it.

    Keras 3 (3.15 here) calls `strategy.reduce` in two ways MultiWorkerMirroredStrategy
    refuses as soon as there are two workers (keras-team/keras#20585 and #20329,
    tensorflow/tensorflow#72388, open; MirroredStrategy accepts both):
    * `reduce("MEAN", (images, labels))` on one whole batch, to build the model before
      training (`_maybe_symbolic_build`): the collective ops take no tuple ("Attempt to
      convert a value (PerReplica ...) to a Tensor"). Each value is reduced on its own.
    * `reduce("MEAN", loss, axis=0)` on each step's scalar logs (`reduce_per_replica`):
      a scalar has no axis 0. A scalar is averaged across the replicas (axis None), which
      is what that call means.
    Every worker makes the same calls, so the collectives still pair up."""

    def reduce(self, reduce_op, value, axis):
        if isinstance(value, (tuple, list, dict)):
            return tf.nest.map_structure(lambda part: self.reduce(reduce_op, part, axis), value)
        if axis is not None and self.experimental_local_results(value)[0].shape.rank == 0:
            axis = None
        return super().reduce(reduce_op, value, axis)


def _create(kind: str) -> tf.distribute.Strategy:
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        # Every local GPU; without GPUs, every logical CPU (one, unless the process split its
        # CPU into several logical devices before TensorFlow started, as the tests do).
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if kind == "multi_worker":
        return _MultiWorkerMirroredStrategy()
    if kind == "tpu":
        resolver = _tpu_resolver()
        if resolver is None:
            raise RuntimeError("runtime.strategy is 'tpu', but no TPU was found (TPUClusterResolver found none)")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {kind!r}")


def runtime_strategy(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    """The strategy of `runtime.strategy`, created on the first call of the process."""
    global _created
    kind = resolve_strategy(runtime.strategy)
    if _created is None:
        _created = (kind, _create(kind))
    elif _created[0] != kind:
        raise RuntimeError(
            f"runtime.strategy {runtime.strategy!r} ({kind}) asked for, but this process already runs under "
            f"{_created[0]!r}: a strategy is chosen once per process (multi-worker collectives and TPUs are "
            "initialised once); run this config in a new process"
        )
    return _created[1]


def set_precision(precision: str) -> None:
    """Keras' global dtype policy, for the models built from now on (float32 included)."""
    keras.mixed_precision.set_global_policy(precision)


def prepare(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    """What a phase needs before it builds a model: the precision policy set, and its strategy."""
    set_precision(runtime.precision)
    return runtime_strategy(runtime)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the phase's files and reports: always, but under a
    multi-worker strategy only the chief of its cluster (see `chief_task`)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    return chief_task(resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict())


def chief_task(task_type: str | None, task_id: int | None, cluster: dict) -> bool:
    """TF_CONFIG's rule: the task of type `chief` when the cluster has one, else worker 0
    (no task at all: a single local worker, its own chief)."""
    if task_type is None:
        return True
    if "chief" in cluster:
        return task_type == "chief"
    return task_type == "worker" and task_id == 0


def needs_static_shapes(strategy: tf.distribute.Strategy) -> bool:
    """Whether training batches must all be full: on TPUs (XLA compiles every step for fixed
    shapes) and across several workers (a worker whose share of a step is empty fails in
    Keras' step: every worker must train the same number of full batches)."""
    return isinstance(strategy, tf.distribute.TPUStrategy) or several_workers(strategy)


def several_workers(strategy: tf.distribute.Strategy) -> bool:
    """MultiWorkerMirroredStrategy: each worker reads the same sequence of training batches and
    trains on its share of each (`alike_every_iteration`), so the reading must be deterministic."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def alike_every_iteration(make_dataset, strategy: tf.distribute.Strategy) -> tf.data.Dataset:
    """An epoch's training dataset (`make_dataset()`), which under a one-host strategy
    yields the same batches each time it is iterated.

    Under a strategy, Keras' `fit` reads one batch of the dataset to build the model
    (`_maybe_symbolic_build`), then iterates it again from the start for the epoch. The
    readers reshuffle and redraw augmentations on every iteration, so the epoch would train
    on another order than the same config on one device. Wrapped in a one-element
    `flat_map`, the pipeline is made anew, with its seeds, on each iteration: every
    iteration is the first, batch for batch what one device trains on.

    Not under several workers or TPU hosts, whose input is auto-sharded, which a pipeline
    hidden in a function defeats (the single element would go to one worker); there each
    worker trains on the second iteration, seeded, so still reproducible. Several workers
    shard by data: each reads every shard in the same (deterministic, seeded) order and
    trains on its share of each full batch, so all train the same number of steps (sharded
    by file, a worker whose files hold fewer images ran out first and got empty batches)."""
    if several_workers(strategy):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return make_dataset().with_options(options)
    hosts = getattr(strategy.extended, "num_hosts", 1) if isinstance(strategy, tf.distribute.TPUStrategy) else 1
    if not (isinstance(strategy, tf.distribute.MirroredStrategy) or hosts == 1 and needs_static_shapes(strategy)):
        return make_dataset()
    return tf.data.Dataset.from_tensors(0).flat_map(lambda _: make_dataset())


def replicas(strategy: tf.distribute.Strategy) -> int:
    return strategy.num_replicas_in_sync


def synchronize_batch_norm(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Under several replicas, make every BatchNormalization layer of `model` compute its
    batch statistics over the global batch (Keras' `synchronized=True`: an all-reduce of
    the moments), as one device computes them; with one replica, Keras' two-pass moments.

    Only layers that run in training mode compute batch statistics (the head's, and the
    backbone's with `freeze_batch_norm: false`); frozen ones cost nothing either way."""
    synchronized = replicas(strategy) > 1
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def local_model(model: keras.Model) -> keras.Model:
    """A view of `model` (the same layers and variables) that predicts on this process's
    device, outside any strategy: every input row gives one output row, in order, and no
    collective op runs, so every worker can score on its own.

    Built outside any strategy's scope, a Keras model has no strategy of its own and runs
    under the default one; the distributed variables are read where they live."""
    if tf.distribute.has_strategy():
        raise RuntimeError("local_model: call it outside strategy.scope(), or the view would carry the strategy")
    return keras.Model(model.input, model.output, name=f"{model.name}_local")
