"""Process-wide settings of a run: the distribution strategy, the precision policy, seeds,
TensorFlow determinism, eager execution."""

from phases.config import PipelineConfig


def configure_runtime(config: PipelineConfig) -> None:
    """Create the run's tf.distribute strategy (first: a multi-worker one configures collective
    ops, which TensorFlow allows only before it initialises its devices) and set Keras'
    precision policy (every run, float32 too: it is process-wide); seed every generator;
    with `runtime.deterministic`, also make TensorFlow ops deterministic; `runtime.eager`
    runs Keras' steps without tf.function (set both ways: it is process-wide)."""
    import tensorflow as tf

    from phases.distribute import prepare
    from phases.unit import seed_everything

    prepare(config.runtime)
    seed_everything(config.runtime.seed)
    tf.config.run_functions_eagerly(config.runtime.eager)
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
