"""The registry of phase kinds: what a config's `kind: ...` may name.

A kind is its config section (a pydantic model with a `kind` literal, `phases/phase_config.py`)
and its trainer (`phases/controller.py`'s `Trainer`: what it builds, the batches of an
epoch, how it scores, its final models). The config's phase union, the controller's
trainer table and the CLI's hints all read this registry, so a new kind is one file and
one line: a line in BUILT_IN below, or, from another package, an entry point in the group
`product_visual_search.phase_kinds` naming a `PhaseKind` (loaded once, when `phases.config`
is imported, so before any config is read):

    [project.entry-points."product_visual_search.phase_kinds"]
    toy = "my_package.toy:KIND"

Trainers are named as "module:Class" and imported when a phase of their kind runs, so
reading a config needs no TensorFlow.
"""

import importlib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Annotated, Union

from pydantic import BaseModel, Field

from phases.phase_config import ClassificationPhase, EndToEndPhase, SiamesePhase

ENTRY_POINTS = "product_visual_search.phase_kinds"


@dataclass(frozen=True)
class PhaseKind:
    """One kind of phase.

    `config`: its section model (its `kind` field's default is the kind's name).
    `trainer`: "module:Class" of its `phases.controller.Trainer`.
    `trains_the_embedding`: it ends with the final embedder (images -> unit vectors), so
    it must be the last phase; classification phases embed with their features instead.
    `summary`: one line for `pvs configs` and error hints."""

    config: type[BaseModel]
    trainer: str
    trains_the_embedding: bool
    summary: str

    @property
    def name(self) -> str:
        return self.config.model_fields["kind"].default

    def trainer_class(self):
        module, name = self.trainer.split(":")
        return getattr(importlib.import_module(module), name)


BUILT_IN = (
    PhaseKind(ClassificationPhase, "phases.classification:ClassificationTrainer", False,
              "a classification head, and the backbone from a given block on (the seed's phases 1-3)"),
    PhaseKind(SiamesePhase, "phases.siamese:SiameseTrainer", True,
              "a projection on cached features with a metric loss (the seed's phase 4)"),
    PhaseKind(EndToEndPhase, "phases.end_to_end:EndToEndTrainer", True,
              "backbone and embedding head trained together with a metric loss (MILDNet's training)"),
)


@cache
def phase_kinds() -> dict[str, PhaseKind]:
    """Every registered kind by name: the built-in ones, then those of entry points."""
    kinds = {kind.name: kind for kind in BUILT_IN}
    for entry in entry_points(group=ENTRY_POINTS):
        kind = entry.load()
        if not isinstance(kind, PhaseKind):
            raise TypeError(f"entry point {entry.name} = {entry.value!r} ({ENTRY_POINTS}) is not a phases.kinds.PhaseKind")
        if kind.name in kinds:
            raise TypeError(f"entry point {entry.name} = {entry.value!r}: phase kind {kind.name!r} is registered already")
        kinds[kind.name] = kind
    return kinds


def phase_union():
    """The type of one item of `PipelineConfig.phases`: any registered kind, by its `kind`."""
    members = tuple(kind.config for kind in phase_kinds().values())
    return Annotated[Union[members], Field(discriminator="kind")]  # noqa: UP007 (a union built at run time)
