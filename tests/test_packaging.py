"""What `pip install .` (not editable) installs: every package of the project."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_setuptools():
    """setuptools installs only the listed packages: one left out (phases.retrieval was) works
    in the editable install of make, and fails to import from a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for top in ("phases", "pipeline", "tfrecords") for init in (ROOT / top).rglob("__init__.py")}
    assert listed == found
