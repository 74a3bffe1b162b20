"""Read a config's YAML files: a safe loader that refuses a key written twice, and `extends`.

A config may start from another: `extends: ../seed.yaml` (a path relative to the file)
takes that config and changes what this file says. Sections merge key by key; phases
merge by name (an entry naming a phase of the parent changes those fields of it, or
replaces it when its `kind` differs, or drops it with `remove: true`; a new name is
appended); any other list replaces the parent's. So a variant says only what it varies.
"""

from pathlib import Path

import yaml

from phases.errors import ConfigError


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


def read_config_yaml(path: Path) -> dict:
    """The mapping of one config file, its `extends` key kept; ConfigError when the file is
    not UTF-8, not valid YAML (the message names the line and column) or not a mapping."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=ConfigLoader) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: {_yaml_problem(error)}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save the config as UTF-8") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, phases, ...)")
    return raw


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong in a YAML file and on which line, without the parser's excerpt."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = (getattr(error, "problem", None) or str(error)).replace("tag:yaml.org,2002:", "!!")
    if isinstance(error, yaml.constructor.ConstructorError):
        return (f"{where}not valid YAML for a config: {problem}; configs are read with a safe loader, "
                "which takes plain values, lists and mappings only: remove the tag")
    return f"{where}not valid YAML: {problem}"


def read_with_parents(path: Path, children: tuple[Path, ...] = ()) -> dict:
    """The file's mapping merged onto the config it `extends` (recursively); `children` are
    the resolved paths of the files that extend this one, so that a loop is refused."""
    raw = read_config_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    parent_path = path.parent / str(parent)
    if not isinstance(parent, str) or not parent_path.is_file():
        raise ConfigError(f"{path}: extends: {parent!r} is no config file (the path is relative to {path.parent})")
    if parent_path.resolve() in (*children, path.resolve()):
        raise ConfigError(f"{path}: extends: {parent} extends {path.name} in turn; a config cannot extend itself")
    return merge_configs(read_with_parents(parent_path, (*children, path.resolve())), raw, path)


def merge_configs(base: dict, changes: dict, origin: str | Path) -> dict:
    """`base` (a config's raw mapping) changed by `changes` as a config that `extends` it
    changes it: sections key by key, phases by name. Neither argument is modified; `origin`
    names the changes in errors."""
    result = dict(base)
    for key, value in changes.items():
        if key == "phases" and isinstance(value, list) and isinstance(base.get(key), list):
            result[key] = _merged_phases(base[key], value, origin)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            result[key] = merge_configs(base[key], value, origin)
        else:
            result[key] = value
    return result


def _merged_phases(base: list, changes: list, origin: str | Path) -> list:
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
            phases[position] = merge_configs(phases[position], change, origin)
    return phases
