"""A config's raw mapping validated into the frozen PipelineConfig, with pydantic's errors
rewritten for a user: each names its field by dotted path, phases by name, and an unknown
key lists the keys its section takes."""

from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from phases.config import PipelineConfig
from phases.errors import ConfigError
from phases.kinds import phase_kinds


def validate(raw: dict, origin: str) -> PipelineConfig:
    """The PipelineConfig of `raw`; a ConfigError naming `origin` and every problem, one a line."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(_readable(raw, item["loc"]))
            if item["type"] == "extra_forbidden":
                message = f"unknown key; the keys here are {', '.join(_fields_at(item['loc'][:-1]))}"
            elif item["type"] == "value_error":
                message = str(item.get("ctx", {}).get("error") or item["msg"])  # ours, without pydantic's prefix
            else:
                message = item["msg"]
            problems.append(f"  {where}: {message}" if where else f"  {message}")
        raise ConfigError(f"{origin}: invalid config\n" + "\n".join(problems)) from None


def _fields_at(location: tuple) -> list[str]:
    """The keys the config section at a pydantic error location accepts."""
    models: list[type[BaseModel]] = [PipelineConfig]
    for step in location:
        if isinstance(step, int):
            continue  # an item of a list: the list's model
        tagged = [model for model in models if "kind" in model.model_fields and model.model_fields["kind"].default == step]
        models = tagged or [
            inner for model in models if step in model.model_fields for inner in _models_in(model.model_fields[step].annotation)
        ]
    return [name for model in models[:1] for name in model.model_fields]


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: `list[MarginStep]` -> [MarginStep], a union -> its members."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]


def _readable(raw: dict, location: tuple) -> list[str]:
    """Error locations with phases named rather than numbered, minus pydantic's union tags."""
    parts: list[str] = []
    node: Any = raw
    for step in location:
        if isinstance(node, list) and isinstance(step, int) and step < len(node):
            item = node[step]
            parts.append(item.get("name", str(step)) if isinstance(item, dict) and parts and parts[-1] == "phases" else str(step))
            node = item
        elif isinstance(node, dict) and step in node:
            parts.append(str(step))
            node = node[step]
        elif step in phase_kinds() and isinstance(node, dict):
            continue  # the discriminator tag pydantic inserts
        else:
            parts.append(str(step))
            node = None
    return parts
