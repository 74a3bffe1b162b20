"""Check, before a run starts, that a valid config's inputs can work: its data source and
its weights file."""

from phases.config import NAMED_WEIGHTS, PipelineConfig
from phases.errors import ConfigError
from tfrecords.errors import SourceError, UserError


def check_inputs(config: PipelineConfig, origin: str) -> None:
    """Refuse, before a run starts, a config whose inputs cannot work: a data source that
    is missing or unusable, or whose `evaluation.split` would have no query to score, and
    a weights file that is missing or not of the architecture. Inside the run, these
    would stop a task minutes in. Costs a listing of the source (seconds for a million
    images) and, with a weights file, building the backbone once (seconds)."""
    try:
        if "://" not in config.data.source:  # remote sources are checked by ingestion itself
            _check_source(config)
        if config.model.weights not in NAMED_WEIGHTS and "://" not in config.model.weights:  # gs://: staged by the flow
            from phases.model import build_backbone

            build_backbone(config.model, image_size=32)  # weights do not depend on the image size; 32 px is cheapest
    except UserError as error:
        raise ConfigError(f"{origin}: {error}") from None


def _check_source(config: PipelineConfig) -> None:
    from tfrecords.ingest import split_counts

    source, group = config.data.source, config.evaluation.split
    try:
        counts = split_counts(source, config.data.ingest)
    except SourceError as error:
        raise SourceError(f"data.source: {error}") from None
    if not counts.get(f"{group}_query"):
        raise SourceError(
            f"data.source {source} gives no {group} query image ({counts.get(f'{group}_index', 0)} {group} index "
            f"images; a {group} product needs 2 or more images to give one), so evaluation.split {group!r} cannot "
            f"be scored; give {group} products more images, raise data.ingest.{group}_fraction, or set "
            f"evaluation.split: {'test' if group == 'val' else 'val'}"
        )
