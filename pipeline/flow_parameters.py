"""Parameter types that make a deployment's Run form in the Prefect UI useful.

`prefect deploy` records the JSON schema of the flow's signature (pydantic's, each
parameter described by the docstring's `Args:`), and the UI draws its form from it. A
parameter that may be None defaults to its "None" tab there ("Property is type None"), so
the flows' parameters default to empty values instead (read, never changed); these types
add the choices:

- `ConfigPath`: a drop-down of the library's configs, or any path (a second tab);
- `StepNames`: a multiple choice of the steps of the library's configs, or any names (a
  phase of a config outside the library).

Each keeps the Python type the flow takes: Prefect checks a deployment run's parameters
against the schema, and a JSON schema `enum` admits nothing else, so the choices come
with a tab that takes any value. They are read from configs/ when Prefect builds the
schema (the @flow decorator, on importing flows.py; `prefect deploy`): under 0.1 s, once
a process.
"""

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated

from pydantic import GetPydanticSchema

from phases.errors import ConfigError
from pipeline.config_files import library_configs
from pipeline.config_yaml import read_config_yaml
from pipeline.running import steps_with_phases


@cache
def library_config_paths() -> list[str]:
    """configs/NAME.yaml of every config of the library, the main ones first (as `pvs
    configs` lists them): what a deployment run, in the project folder, can name."""
    return [f"configs/{name}.yaml" for name, _ in _main_first()]


@cache
def library_step_names() -> list[str]:
    """What `force` may name in some config of the library: ingest, baseline, the phases in
    the order the configs first name them, extraction. Each file's own `phases` suffice (a
    phase a config inherits is named in the file it extends), so no config is merged or
    validated. A file that cannot be read adds none: its error is for the run that uses it,
    not for every import of flows.py."""
    phases: dict[str, None] = {}
    for _, path in _main_first():
        try:
            raw = read_config_yaml(path)
        except ConfigError:
            continue
        named = [phase.get("name") for phase in raw.get("phases") or [] if isinstance(phase, dict)]
        phases.update(dict.fromkeys(name for name in named if isinstance(name, str)))
    return steps_with_phases(list(phases))


def _main_first() -> list[tuple[str, Path]]:
    return sorted(library_configs(), key=lambda config: ("/" in config[0], config[0]))


def choice_or_any(choices: Callable[[], list[str]], label: str, other_label: str) -> GetPydanticSchema:
    """Annotated metadata for a `str` or `list[str]` parameter: in its JSON schema, two tabs,
    `label` offering `choices()` (a drop-down; a multiple choice for a list) and `other_label`
    taking any value, as the type does."""

    def json_schema(core_schema, handler) -> dict:
        schema = handler(core_schema)
        if schema.get("type") == "array":
            chosen = {**schema, "items": {**schema["items"], "enum": choices()}}
        else:
            chosen = {**schema, "enum": choices()}
        return {"anyOf": [{**chosen, "title": label}, {**schema, "title": other_label}]}

    return GetPydanticSchema(get_pydantic_json_schema=json_schema)


ConfigPath = Annotated[str, choice_or_any(library_config_paths, "library config", "path")]
StepNames = Annotated[list[str], choice_or_any(library_step_names, "steps", "other names")]
