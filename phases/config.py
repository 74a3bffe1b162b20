"""The one config model of the pipeline: data, model, the phase list, evaluation, runtime.

Every number of the seed recipe is a field here, with its unit and reason. The
model is frozen once loaded and rejects unknown keys, so a typo in a YAML file is
an error naming the field rather than a silently ignored setting. YAML loading and
`--set` overrides live in `pipeline/`; phases only receive validated objects.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from tfrecords.options import IngestOptions


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(Section):
    # A CSV, an image folder, or a folder already written by `pvs ingest`.
    source: str
    # Pixels per side fed to the model. The seed used 224 (EfficientNetB0's native
    # size); 32 is the smallest EfficientNet accepts and what tests use.
    image_size: int = Field(224, ge=32)
    batch_size: int = Field(32, ge=2)
    # Encoded records held for shuffling (~30 KB each for eProduct-size JPEGs).
    shuffle_buffer: int = Field(2048, ge=0)
    ingest: IngestOptions = IngestOptions()


# Where `unfreeze_from` may start training, in each backbone's layer order: the layer-name
# prefixes of its stem, its blocks (as `phases.model.block_names` lists them from a built
# model; tests/test_model.py checks the two agree) and its top. Known here, so that a typo
# is refused when the config loads, not when its phase starts hours into a run.
LAYER_GROUPS = {
    "EfficientNetB0": (
        "stem", "block1a", "block2a", "block2b", "block3a", "block3b", "block4a", "block4b", "block4c",
        "block5a", "block5b", "block5c", "block6a", "block6b", "block6c", "block6d", "block7a", "top",
    ),
}


class ModelConfig(Section):
    architecture: Literal["EfficientNetB0"] = "EfficientNetB0"
    # `imagenet` (Keras downloads and caches it; needs the internet once), `none`
    # (random initialisation: offline machines, tests), or a path to a
    # `.weights.h5` file of the same architecture.
    weights: str = "imagenet"
    # Head of phases 1-3: BatchNormalization, Dropout(dropout), Dense(classes, softmax).
    dropout: float = Field(0.2, ge=0, lt=1)
    # The seed keeps the backbone's BatchNormalization frozen (its ImageNet statistics
    # and scales). With `weights: none` there are no statistics to keep: the frozen
    # layers pass random-init activations through unnormalised and the features
    # collapse (~1e-6), so configs that start from scratch set this to false.
    freeze_batch_norm: bool = True
    # With `weights: none`, the BatchNormalization statistics are placeholders (mean 0,
    # variance 1) and the pooled features collapse to ~1e-6. This many train batches
    # are run through the new backbone to measure real statistics first (as AdaBN
    # does), so that frozen BatchNormalization works from scratch too. 0: off.
    batch_norm_calibration_batches: int = Field(0, ge=0)
    # What phases 1-3 classify: `category`, `product`, or `auto` (categories when
    # the data has them, else the train products).
    classify: Literal["auto", "category", "product"] = "auto"


class ClassificationPhase(Section):
    """A phase training the classification head, and the backbone from a given layer on."""

    kind: Literal["classification"] = "classification"
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    # `none`: backbone frozen (head only); `from`: every non-BatchNormalization layer
    # from the first one whose name starts with `unfreeze_from`; `all`: every
    # non-BatchNormalization layer. Backbone BatchNormalization always stays frozen.
    unfreeze: Literal["none", "from", "all"]
    unfreeze_from: str | None = None
    learning_rate: PositiveFloat  # Adam
    epochs: PositiveInt
    # Six-way augmentation: `random` picks one of the six views per image and epoch;
    # `all` trains on all six (an epoch is then 6x longer); `none` turns it off.
    augment: Literal["none", "random", "all"] = "random"

    @model_validator(mode="after")
    def _prefix_given_when_needed(self):
        if (self.unfreeze == "from") != (self.unfreeze_from is not None):
            raise ValueError(
                f"phase {self.name!r}: unfreeze_from is needed with unfreeze: from, and only then "
                f"(got unfreeze: {self.unfreeze}, unfreeze_from: {self.unfreeze_from!r})"
            )
        return self


class MarginStep(Section):
    """One step of the siamese phase's schedule: this margin and rate for these epochs."""

    margin: PositiveFloat  # triplet margin, in units of the distance metric
    learning_rate: PositiveFloat
    epochs: PositiveInt


class SiamesePhase(Section):
    """A projection trained on cached backbone features with a triplet loss."""

    kind: Literal["siamese"] = "siamese"
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    projection_dim: PositiveInt = 512
    # What shares a label: `view` (the six augmented views of one source image, as in
    # the seed) or `product` (every view of every image of one product).
    labels: Literal["view", "product"] = "view"
    loss: Literal["triplet_semihard", "triplet_hard", "contrastive"] = "triplet_semihard"
    distance_metric: Literal["L2", "squared-L2", "angular"] = "angular"
    margin_schedule: list[MarginStep] = Field(min_length=1)
    # Batches hold `labels_per_batch` labels x `views_per_label` members each, so
    # every anchor has positives (a random batch of a million images has almost none).
    labels_per_batch: int = Field(16, ge=2)
    views_per_label: int = Field(4, ge=2)

    @property
    def epochs(self) -> int:
        return sum(step.epochs for step in self.margin_schedule)


Phase = Annotated[ClassificationPhase | SiamesePhase, Field(discriminator="kind")]


class EvaluationConfig(Section):
    # Split scored after every epoch (`val`: its query set against its index set).
    split: Literal["val", "test"] = "val"
    # Split scored at the end of each phase and used for the submission, if present.
    final_split: Literal["val", "test"] = "test"
    # Images per embedding batch when scoring (inference only: larger than training).
    batch_size: int = Field(128, ge=1)


class RuntimeConfig(Section):
    seed: int = 0
    # Seeds plus TensorFlow op determinism: the same run gives the same weights and
    # scores, and a resumed phase ends as an uninterrupted one. Slower on GPUs.
    deterministic: bool = False


class PipelineConfig(Section):
    """The whole pipeline; `configs/*.yaml` files are instances of it."""

    description: str = ""
    data: DataConfig
    model: ModelConfig = ModelConfig()
    phases: list[Phase] = Field(min_length=1)
    evaluation: EvaluationConfig = EvaluationConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _phase_list_is_coherent(self):
        names = [phase.name for phase in self.phases]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"phase names must be unique; repeated: {', '.join(repeated)}")
        if "baseline" in names:
            raise ValueError("'baseline' is the name of the row scored before any phase; rename that phase")
        kinds = [phase.kind for phase in self.phases]
        if "siamese" in kinds and ("classification" in kinds[kinds.index("siamese"):] or kinds.count("siamese") > 1):
            raise ValueError(
                "the siamese phase trains on features of the final backbone: keep one, after every classification phase"
            )
        groups = LAYER_GROUPS[self.model.architecture]
        for phase in self.phases:
            prefix = getattr(phase, "unfreeze_from", None)
            if prefix is not None and not _starts_a_layer(prefix, groups):
                raise ValueError(
                    f"phases.{phase.name}.unfreeze_from: {prefix!r} starts no layer of {self.model.architecture}; "
                    f"give one of {', '.join(groups)} (or a layer name inside one, e.g. {groups[-2]}_expand_conv)"
                )
        return self

    def phase(self, name: str) -> ClassificationPhase | SiamesePhase:
        return next(phase for phase in self.phases if phase.name == name)


def _starts_a_layer(prefix: str, groups: tuple[str, ...]) -> bool:
    """Whether `prefix` begins a group's name (`block6` -> block6a) or a layer inside a group
    (`block7a_expand_conv`; that layer's existence is checked when the model is built)."""
    return bool(prefix) and any(group.startswith(prefix) or prefix.startswith(f"{group}_") for group in groups)
