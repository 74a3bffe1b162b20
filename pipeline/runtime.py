"""Process-wide settings of a run: seeds and TensorFlow determinism."""

from phases.config import PipelineConfig


def configure_runtime(config: PipelineConfig) -> None:
    """Seed every generator; with `runtime.deterministic`, also make TensorFlow ops deterministic."""
    import tensorflow as tf

    from phases.unit import seed_everything

    seed_everything(config.runtime.seed)
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
