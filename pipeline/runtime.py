"""Process-wide settings of a run: seeds, TensorFlow determinism, eager execution."""

from phases.config import PipelineConfig


def configure_runtime(config: PipelineConfig) -> None:
    """Seed every generator; with `runtime.deterministic`, also make TensorFlow ops deterministic;
    `runtime.eager` runs Keras' steps without tf.function (set both ways: it is process-wide)."""
    import tensorflow as tf

    from phases.unit import seed_everything

    seed_everything(config.runtime.seed)
    tf.config.run_functions_eagerly(config.runtime.eager)
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
