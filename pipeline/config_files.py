"""Load a pipeline config from YAML, apply `--set key=value` overrides, validate.

Overrides use dotted keys; a phase is addressed by its name and a list item by
its position: `phases.full.epochs=3`, `phases.siamese.margin_schedule.0.margin=0.4`,
`data.source=gs://bucket/products.csv`. Values are parsed as YAML scalars
(`3` is an int, `1e-4` a float, `true` a bool). Files are read with a safe loader.
"""

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from phases.config import PipelineConfig
from phases.errors import ConfigError


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['a.b=3', 'c=x'] -> {'a.b': 3, 'c': 'x'}."""
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"--set {pair!r}: write KEY=VALUE, e.g. phases.full.epochs=3")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return overrides


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """The validated config of a YAML file with overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; the ones shipped are in configs/")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, phases, ...)")
    for key, value in (overrides or {}).items():
        _set(raw, key, value, path)
    return validate(raw, str(path))


def validate(raw: dict, origin: str) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(_readable(raw, item["loc"])) or "(top level)"
            problems.append(f"  {where}: {item['msg']}")
        raise ConfigError(f"{origin}: invalid config\n" + "\n".join(problems)) from None


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
        elif step in ("classification", "siamese") and isinstance(node, dict):
            continue  # the discriminator tag pydantic inserts
        else:
            parts.append(str(step))
            node = None
    return parts


def _set(raw: dict, dotted: str, value: Any, origin: Path) -> None:
    keys = dotted.split(".")
    node: Any = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            node, key = _list_item(node, key, dotted, origin)
            if last:
                raise ConfigError(f"--set {dotted}: give a field of the item, e.g. {dotted}.epochs")
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:depth])} is a value, not a section")
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def _list_item(items: list, key: str, dotted: str, origin: Path):
    if key.isdigit() and int(key) < len(items):
        return items[int(key)], key
    for item in items:
        if isinstance(item, dict) and item.get("name") == key:
            return item, key
    names = [str(item.get("name")) for item in items if isinstance(item, dict) and "name" in item]
    raise ConfigError(f"--set {dotted}: no item {key!r} in {origin}; there are {', '.join(names) or len(items)}")
