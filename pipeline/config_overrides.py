"""`--set key=value` overrides: read from the command line, applied to a config's raw
mapping, and written back as options for a command to show.

Overrides use dotted keys; a phase is addressed by its name and a list item by
its position: `phases.full.epochs=3`, `phases.siamese.margin_schedule.0.margin=0.4`,
`data.source=gs://bucket/products.csv`. Values are parsed as YAML scalars
(`3` is an int, `1e-4` a float, `true` a bool).
"""

import shlex
from pathlib import Path
from typing import Any

import yaml

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


def override_arguments(overrides: dict[str, Any]) -> str:
    """The `--set` options that `parse_overrides` reads back as `overrides`, quoted for a
    shell: {'phases.full.epochs': 3, 'data.source': 'my images'} ->
    `--set phases.full.epochs=3 --set 'data.source=my images'`."""
    def text(value: Any) -> str:  # YAML as parse_overrides reads it: '3' quoted stays a string
        if value == "":
            return ""
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()

    return " ".join(f"--set {shlex.quote(f'{key}={text(value)}')}" for key, value in overrides.items())


def apply_override(raw: dict, dotted: str, value: Any, origin: Path) -> None:
    """Set the field `dotted` of the raw config `raw` (read from `origin`) to `value`, in
    place; missing sections are made, a missing list item is a ConfigError."""
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
