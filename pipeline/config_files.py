"""Load a pipeline config from YAML, apply `--set key=value` overrides, validate.

A config may start from another: `extends: ../seed.yaml` (a path relative to the file)
takes that config and changes what this file says. Sections merge key by key; phases
merge by name (an entry naming a phase of the parent changes those fields of it, or
replaces it when its `kind` differs, or drops it with `remove: true`; a new name is
appended); any other list replaces the parent's. So a variant says only what it varies.

`--config` takes a file, or the name of a config of the library (`configs/`), as
`pvs configs` lists them: `recipe/no-block7a` is configs/recipe/no-block7a.yaml.

Overrides use dotted keys; a phase is addressed by its name and a list item by
its position: `phases.full.epochs=3`, `phases.siamese.margin_schedule.0.margin=0.4`,
`data.source=gs://bucket/products.csv`. Values are parsed as YAML scalars
(`3` is an int, `1e-4` a float, `true` a bool). Files are read with a safe loader, which
also refuses a key written twice in one mapping (YAML would keep the last one silently).
"""

import shlex
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from phases.config import NAMED_WEIGHTS, PipelineConfig
from phases.errors import ConfigError
from pipeline.redaction import redact
from tfrecords.errors import SourceError, UserError


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


def library() -> Path:
    """The named configs: ./configs when there is one, else the one next to this package."""
    here = Path("configs")
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(text: str | Path) -> Path:
    """A config file path as given, or the library file a name stands for."""
    path = Path(text)
    if path.is_file():
        return path
    for candidate in (library() / path, library() / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{path}: no such config file or library config; `pvs configs` lists the library")


def library_configs() -> list[tuple[str, Path]]:
    """(name, path) of every config of the library, sorted: `seed`, `recipe/no-block7a`, ..."""
    root = library()
    return sorted((path.relative_to(root).with_suffix("").as_posix(), path) for path in root.rglob("*.yaml"))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """The validated config of a YAML file (or library name) with overrides applied."""
    path = resolve_config_path(path)
    raw = _read_with_parents(path, ())
    for key, value in (overrides or {}).items():
        _set(raw, key, value, path)
    config = validate(raw, str(path))
    _refuse_credentials(config, path)
    return config


class RepeatedKeyError(yaml.MarkedYAMLError):
    """A key written twice in one mapping of a YAML file."""


class ConfigLoader(yaml.SafeLoader):
    """The safe loader, refusing a key written twice in one mapping: YAML's own loaders keep
    the last one silently, so a second `data:` block would hide the first one's `source`."""

    def construct_document(self, node):
        _refuse_repeated_keys(node, (), set())
        return super().construct_document(node)


def _refuse_repeated_keys(node: yaml.Node, where: tuple[str, ...], seen: set[int]) -> None:
    """Raise RepeatedKeyError at the second of two equal keys of a mapping under `node`;
    `where` is the node's dotted path (phases by name), `seen` the nodes already walked
    (an alias repeats a node, and may contain itself)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            _refuse_repeated_keys(item, (*where, _item_name(item, position)), seen)
    elif isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name, line = str(key.value), key.start_mark.line + 1
            if (key.tag, name) in lines:
                first = lines[key.tag, name]
                on = f"on lines {first} and {line}" if first != line else f"on line {line}"
                raise RepeatedKeyError(problem=(
                    f"{'.'.join((*where, name))} is given twice, {on}, and only the second would count: delete one, "
                    "or merge the two"
                ), problem_mark=key.start_mark)
            lines[key.tag, name] = line
            _refuse_repeated_keys(value, (*where, name), seen)


def _item_name(item: yaml.Node, position: int) -> str:
    """A list item's part of a dotted path: its `name` (phases), else its position."""
    if isinstance(item, yaml.MappingNode):
        for key, value in item.value:
            if key.value == "name" and isinstance(value, yaml.ScalarNode):
                return str(value.value)
    return str(position)


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=ConfigLoader) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: {_yaml_problem(error)}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save the config as UTF-8") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, phases, ...)")
    return raw


def _read_with_parents(path: Path, children: tuple[Path, ...]) -> dict:
    """The file's mapping merged onto the config it `extends` (recursively)."""
    raw = _read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    parent_path = path.parent / str(parent)
    if not isinstance(parent, str) or not parent_path.is_file():
        raise ConfigError(f"{path}: extends: {parent!r} is no config file (the path is relative to {path.parent})")
    if parent_path.resolve() in (*children, path.resolve()):
        raise ConfigError(f"{path}: extends: {parent} extends {path.name} in turn; a config cannot extend itself")
    return _merged(_read_with_parents(parent_path, (*children, path.resolve())), raw, path)


def _merged(base: dict, changes: dict, origin: Path) -> dict:
    result = dict(base)
    for key, value in changes.items():
        if key == "phases" and isinstance(value, list) and isinstance(base.get(key), list):
            result[key] = _merged_phases(base[key], value, origin)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            result[key] = _merged(base[key], value, origin)
        else:
            result[key] = value
    return result


def _merged_phases(base: list, changes: list, origin: Path) -> list:
    phases = [dict(phase) if isinstance(phase, dict) else phase for phase in base]
    names = [phase.get("name") if isinstance(phase, dict) else None for phase in phases]
    for change in changes:
        name = change.get("name") if isinstance(change, dict) else None
        if name is None:
            raise ConfigError(f"{origin}: phases: an entry of a config that extends another needs a name: {change!r}")
        if name not in names:
            if change.get("remove"):
                raise ConfigError(f"{origin}: phases: no phase {name!r} to remove; there are {', '.join(map(str, names))}")
            phases.append(change)
            names.append(name)
            continue
        position = names.index(name)
        if change.get("remove"):
            del phases[position], names[position]
        elif change.get("kind", phases[position].get("kind")) != phases[position].get("kind"):
            phases[position] = change
        else:
            phases[position] = _merged(phases[position], change, origin)
    return phases


def _refuse_credentials(config: PipelineConfig, origin: Path) -> None:
    """A password or token written into a path would be kept wherever the run records its
    config (Prefect's flow-run parameters, run-config.yaml, the manifest's source): refuse
    it, showing it masked. Sources and weights are the config's only addresses."""
    for field, value in (("data.source", config.data.source), ("model.weights", config.model.weights)):
        if redact(value) != value:
            raise ConfigError(
                f"{origin}: {field}: {redact(value)} holds a credential; runs record their config, so credentials "
                "never go in a config or --set: give the address without it and let the storage client find them "
                "(e.g. GOOGLE_APPLICATION_CREDENTIALS for gs://)"
            )


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


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong in a YAML file and on which line, without the parser's excerpt."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = (getattr(error, "problem", None) or str(error)).replace("tag:yaml.org,2002:", "!!")
    if isinstance(error, yaml.constructor.ConstructorError):
        return (f"{where}not valid YAML for a config: {problem}; configs are read with a safe loader, "
                "which takes plain values, lists and mappings only: remove the tag")
    return f"{where}not valid YAML: {problem}"


def validate(raw: dict, origin: str) -> PipelineConfig:
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
        elif step in ("classification", "siamese", "end_to_end") and isinstance(node, dict):
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
