"""The flows' parameters as `prefect deploy` records them (the schema a deployment's Run
form is drawn from): typed, described, none defaulting to None (the form's "Property is
type None"), the library's configs and steps offered, any other path or step accepted,
and `pvs run`'s hand-off (`request`) left out. tests/test_deployment.py looks at the form."""

import json

import pytest
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import is_valid

from conftest import REPO
from pipeline import flow_parameters
from pipeline.config_files import library_configs, load_config
from pipeline.running import step_names


def deployed_schema(entrypoint: str) -> dict:
    """What `prefect deploy` records for an entrypoint of prefect.yaml (cli/deploy/_core.py)."""
    return parameter_schema(load_flow_from_entrypoint(entrypoint)).model_dump_for_openapi()


@pytest.fixture(scope="module")
def finetune_schema() -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)  # where `prefect deploy` runs
        return deployed_schema("flows.py:finetune")


def choices(field: dict, tab: str) -> list[str]:
    """The values a field's tab `tab` offers: its enum, or its items' enum (a list)."""
    branch = next(branch for branch in field["anyOf"] if branch["title"] == tab)
    return branch.get("enum") or branch["items"]["enum"]


@pytest.mark.parametrize("entrypoint", ["flows.py:finetune", "flows.py:compare_runs", "flows.py:catalog_index"])
def test_every_flow_parameter_is_described_and_none_defaults_to_none(entrypoint, monkeypatch):
    monkeypatch.chdir(REPO)
    schema = deployed_schema(entrypoint)
    assert all(field.get("description") for field in schema["properties"].values()), schema["properties"]
    assert "null" not in json.dumps(schema)


def test_finetune_offers_the_library_configs_and_takes_any_path(finetune_schema):
    field = finetune_schema["properties"]["config_path"]
    library = choices(field, "library config")
    assert sorted(library) == sorted(f"configs/{name}.yaml" for name, _ in library_configs())
    assert library[:2] == ["configs/demo.yaml", "configs/seed.yaml"]  # the main ones first, as `pvs configs`
    assert field["default"] == "configs/demo.yaml"
    assert is_valid({"config_path": "configs/recipe/no-block7a.yaml"}, finetune_schema)
    assert is_valid({"config_path": "/data/my-configs/night.yaml"}, finetune_schema)


def test_finetune_offers_every_step_of_the_library_and_takes_any_name(finetune_schema):
    field = finetune_schema["properties"]["force"]
    steps = choices(field, "steps")
    for _, path in library_configs():
        assert set(step_names(load_config(path))) <= set(steps), path
    assert steps[:2] == ["ingest", "baseline"] and steps[-1] == "extraction"
    assert field["default"] == []
    assert is_valid({"force": ["full", "extraction"]}, finetune_schema)
    assert is_valid({"force": ["a-phase-of-my-own"]}, finetune_schema)  # a config outside the library
    assert not is_valid({"force": "full"}, finetune_schema)


def test_finetune_overrides_are_an_object_of_dotted_keys_and_request_is_not_a_parameter(finetune_schema):
    properties = finetune_schema["properties"]
    assert list(properties) == ["config_path", "overrides", "run_dir", "force"]  # no `request`
    assert properties["overrides"]["type"] == "object" and properties["overrides"]["default"] == {}
    assert '{"phases.full.epochs": 3' in properties["overrides"]["description"]
    assert properties["run_dir"] == {**properties["run_dir"], "type": "string", "default": ""}
    assert is_valid({"overrides": {"phases.full.epochs": 3, "data.source": "data/x.csv"}}, finetune_schema)
    assert not finetune_schema.get("definitions")  # RunRequest's config models no longer ride along


def test_library_steps_come_from_the_files_and_an_unreadable_file_adds_none(tmp_path, monkeypatch):
    (tmp_path / "configs" / "mine").mkdir(parents=True)
    (tmp_path / "configs" / "base.yaml").write_text("phases:\n  - name: warmup\n  - name: polish\n")
    (tmp_path / "configs" / "mine" / "longer.yaml").write_text("extends: ../base.yaml\nphases:\n  - name: extra\n")
    (tmp_path / "configs" / "broken.yaml").write_text("phases: [name: {\n")
    monkeypatch.chdir(tmp_path)
    for cached in (flow_parameters.library_config_paths, flow_parameters.library_step_names):
        cached.cache_clear()
    try:
        assert flow_parameters.library_config_paths() == [
            "configs/base.yaml", "configs/broken.yaml", "configs/mine/longer.yaml"]
        assert flow_parameters.library_step_names() == ["ingest", "baseline", "warmup", "polish", "extra", "extraction"]
    finally:
        for cached in (flow_parameters.library_config_paths, flow_parameters.library_step_names):
            cached.cache_clear()
