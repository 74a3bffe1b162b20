"""Options of ingestion and of the reading pipeline (sections of the pipeline config)."""

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MEGABYTE = 10**6


class IngestOptions(BaseModel):
    """How `pvs ingest` splits and shards a source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Target shard size in bytes. ~100-200 MB keeps reads sequential and gives
    # enough shards (>= 10x the reader's parallelism) for a million images.
    shard_size: int = Field(128 * MEGABYTE, gt=0)
    # Share of products held out for validation / test when the source has no split.
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    # Seed of the product hash (splits), the query choice and the record order.
    seed: int = 0
    # Parallel shard writers (processes); 1 writes in this process.
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # Fail on the first unusable image instead of skipping and listing it.
    strict: bool = False
    # Images above this many pixels are refused (a 64 MP RGB image decodes to 192 MB).
    max_image_pixels: int = Field(64_000_000, gt=0)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction}; "
                "it must stay below 1 so that some products are left to train on"
            )
        return self


class ReadOptions(BaseModel):
    """How shards are read back as training or evaluation batches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(224, ge=8)  # pixels per side after pad-to-square and resize
    # `none`: each image once; `random`: one of the six views per image and epoch;
    # `all`: all six views of each image, one after the other (identity, flip up-down,
    # flip left-right, rot90 x1, x2, x3).
    augment: Literal["none", "random", "all"] = "none"
    shuffle_buffer: int = Field(0, ge=0)  # records; 0 keeps the shard order
    # With `augment: all` and a shuffle_buffer: views (decoded) shuffled after the expansion,
    # so a batch holds views of many images; 0 keeps each image's six views together.
    view_shuffle_buffer: int = Field(0, ge=0)
    batch_size: int | None = Field(None, ge=1)
    # Drop the last, partial batch: every batch has the static shape TPUs need. For training
    # batches only (the phases set it under a TPU strategy); evaluation must see every image.
    drop_remainder: bool = False
    seed: int = 0
    # Same elements in the same order on every run (slower: no out-of-order parallelism).
    deterministic: bool = False
    # Check each shard's sha256 against the manifest before reading it.
    verify: bool = True
