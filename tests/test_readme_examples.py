"""The README's commands, checked so that they cannot rot: every `pvs` and `prefect` line of its
shell blocks parses with the real command line (without running), names configs that exist and
`--set` keys they have, deployments that prefect.yaml makes and parameters their flow takes; the
options of the Commands table exist. tests/test_serve.py runs the README's curl line."""

import io
import json
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from functools import cache

import pytest
import yaml

from conftest import REPO
from pipeline.cli_options import command_line
from pipeline.config_files import load_config
from pipeline.config_overrides import parse_overrides
from tfrecords.errors import UserError

README = REPO / "README.md"
SHELL_BLOCKS = {"", "console", "bash", "sh", "shell"}  # fenced blocks whose lines are commands
OUR_COMMANDS = {"pvs", "prefect"}  # other lines (make, export, curl, a command's output) are not checked
# Placeholders the README writes where the parser wants a value of a type.
PLACEHOLDERS = {"FLOW_RUN_ID": "00000000-0000-0000-0000-000000000000"}


@dataclass(frozen=True)
class Example:
    """A command of the README: where it starts, as written, and its words as the shell splits
    them (placeholders filled in)."""

    line: int
    text: str
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"README.md line {self.line}: {self.text}"


def shell_examples() -> list[Example]:
    """The `pvs` and `prefect` commands of README.md's shell blocks, continuation lines joined,
    comments, a `$ ` prompt and a trailing `&` dropped, placeholders filled in."""
    examples, language, pending, start = [], None, "", 0
    for number, text in enumerate(README.read_text().splitlines(), start=1):
        if text.strip().startswith("```"):
            language = text.strip().removeprefix("```").strip() if language is None else None
            continue
        if language not in SHELL_BLOCKS:
            continue
        start = start if pending else number
        pending += text.strip().removeprefix("$ ")
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        words = [PLACEHOLDERS.get(word, word) for word in shlex.split(pending, comments=True)]
        if words and words[-1] == "&":
            words.pop()
        if words and words[0] in OUR_COMMANDS:
            examples.append(Example(start, " ".join(pending.split()), tuple(words)))
        pending = ""
    return examples


def examples_of(command: str) -> list[Example]:
    return [example for example in shell_examples() if example.words[0] == command]


def line_id(example: Example) -> str:
    return f"line{example.line}"


@cache
def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


@cache
def deployment_parameters() -> dict[str, set[str]]:
    """{"flow name/deployment name": the flow's parameters} of prefect.yaml's deployments."""
    import flows

    parameters = {}
    for deployment in prefect_yaml()["deployments"]:
        flow = getattr(flows, deployment["entrypoint"].removeprefix("flows.py:"))
        parameters[f"{flow.name}/{deployment['name']}"] = set(flow.parameters.properties)
    return parameters


def check_config(example: Example, config: str, overrides: dict) -> None:
    try:
        load_config(config, overrides)
    except UserError as error:
        pytest.fail(f"{example}: {error}")


@pytest.mark.parametrize("example", examples_of("pvs"), ids=line_id)
def test_pvs_example_parses_and_names_a_config_that_exists(example, monkeypatch):
    monkeypatch.chdir(REPO)
    errors = io.StringIO()
    with redirect_stderr(errors):
        try:
            arguments = command_line().parse_args(example.words[1:])
        except SystemExit:
            pytest.fail(f"{example}: {errors.getvalue().strip().splitlines()[-1]}")
    if arguments.command == "run":
        check_config(example, arguments.config, parse_overrides(arguments.overrides))


@pytest.mark.parametrize("example", examples_of("prefect"), ids=line_id)
def test_prefect_example_parses_and_names_a_deployment_and_parameters_that_exist(example, monkeypatch):
    from cyclopts import CycloptsError
    from prefect.cli._app import _app  # Prefect's command line (cyclopts): parse_args parses, runs nothing

    monkeypatch.chdir(REPO)
    try:
        _, bound, _ = _app.parse_args(list(example.words[1:]), exit_on_error=False, print_error=False)
    except CycloptsError as error:
        pytest.fail(f"{example}: {error}")
    if example.words[1:3] != ("deployment", "run"):
        return
    name, pairs = bound.arguments["name"], bound.arguments.get("params") or []
    assert name in deployment_parameters(), f"{example}: prefect.yaml makes no deployment {name}"
    parameters = dict(pair.split("=", 1) for pair in pairs)
    unknown = set(parameters) - deployment_parameters()[name]
    assert not unknown, f"{example}: {name}'s flow has no parameter {', '.join(sorted(unknown))}"
    if "config_path" in parameters:
        check_config(example, parameters["config_path"], json.loads(parameters.get("overrides", "{}")))


def test_every_work_pool_of_prefect_yaml_is_created_and_has_a_worker_in_the_readme():
    pools = {deployment["work_pool"]["name"] for deployment in prefect_yaml()["deployments"]}
    created, served = "created by `prefect work-pool create`", "served by `prefect worker start`"
    named = {created: set(), served: set()}
    for example in examples_of("prefect"):
        words = example.words
        if words[1:3] == ("work-pool", "create"):
            named[created].add(words[3])
        elif words[1:3] == ("worker", "start"):
            named[served].add(words[words.index("--pool") + 1])
    for how, found in named.items():
        assert found == pools, f"README.md's work pools {how}: {sorted(found)}; prefect.yaml's: {sorted(pools)}"


def commands_table() -> list:
    """(README line, synopsis) of each `pvs ...` of the Commands table's first column."""
    rows = []
    for number, text in enumerate(README.read_text().splitlines(), start=1):
        if text.startswith("| `pvs "):
            first_cell = text.split(" | ")[0]
            rows += [pytest.param(number, synopsis, id=f"line{number}-{synopsis.split()[1]}")
                     for synopsis in re.findall(r"`(pvs [^`]+)`", first_cell)]
    return rows


@pytest.mark.parametrize("line, synopsis", commands_table())
def test_commands_table_names_commands_and_options_that_exist(line, synopsis):
    subcommand = [word for word in synopsis.split()[1:3] if re.fullmatch(r"[a-z][a-z-]*", word)]
    printed = io.StringIO()
    with redirect_stdout(printed), redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as exit:
        command_line().parse_args([*subcommand, "--help"])
    assert exit.value.code == 0, f"README.md line {line}: pvs has no command {' '.join(subcommand)}"
    options = re.findall(r"(?<![\w-])--[a-z][a-z-]*", synopsis)
    missing = [option for option in options if not re.search(rf"{option}(?![\w-])", printed.getvalue())]
    assert not missing, f"README.md line {line}: `pvs {' '.join(subcommand)}` has no option {', '.join(missing)}"
