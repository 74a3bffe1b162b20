"""Load a pipeline config: find the file, read it with the configs it `extends`, apply
`--set key=value` overrides, validate, and refuse credentials written into it.

`--config` takes a file, or the name of a config of the library (`configs/`), as
`pvs configs` lists them: `recipe/no-block7a` is configs/recipe/no-block7a.yaml.

Where each step lives: reading YAML safely (a key written twice is refused) and merging
`extends`, `config_yaml.py`; overrides, `config_overrides.py`; validation and its error
messages, `config_validation.py`; the check of a config's data source and weights before a
run, `config_inputs.py`.
"""

from pathlib import Path
from typing import Any

from phases.config import PipelineConfig
from phases.errors import ConfigError
from pipeline.config_overrides import apply_override
from pipeline.config_validation import validate
from pipeline.config_yaml import read_with_parents
from pipeline.redaction import redact


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
    raw = read_with_parents(path)
    for key, value in (overrides or {}).items():
        apply_override(raw, key, value, path)
    config = validate(raw, str(path))
    _refuse_credentials(config, path)
    return config


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
