"""A new phase kind is one file and one registry line: a toy kind, installed as a package
with an entry point, is accepted by the config, listed in its errors, trained by the
controller (rows, checkpoints, resume, final model) and run by `pvs run` end to end."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args

import pytest
import yaml
from conftest import REPO, states

from phases.kinds import BUILT_IN, ENTRY_POINTS, phase_kinds

# The whole kind: its config section and its trainer (an embedder of 8x8 thumbnails).
TOY_KIND = '''
from typing import Literal

import keras
from pydantic import Field, PositiveFloat, PositiveInt

from phases.controller import Trainer
from phases.kinds import PhaseKind
from phases.losses import TripletSemiHardLoss
from phases.phase_config import Section
from phases.scoring import score_split
from phases.unit import epoch_seed, seed_model_randomness
from tfrecords.options import ReadOptions
from tfrecords.reader import read_images


class ToyPhase(Section):
    kind: Literal["toy"] = "toy"
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    epochs: PositiveInt = 2
    learning_rate: PositiveFloat = 1e-2


class ToyTrainer(Trainer):
    def new_model(self):
        seed_model_randomness(epoch_seed(self.config.runtime.seed, self.phase.name, -1))
        size = self.config.data.image_size
        images = keras.Input((size, size, 3))
        thumbnails = keras.layers.Resizing(8, 8)(images)
        vectors = keras.layers.Dense(8)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(thumbnails)))
        model = keras.Model(images, keras.layers.UnitNormalization()(vectors))
        model.compile(optimizer=keras.optimizers.Adam(self.phase.learning_rate), loss=TripletSemiHardLoss(margin=0.5))
        return model

    def batches(self, epoch, strategy):
        options = ReadOptions(image_size=self.config.data.image_size, batch_size=16, shuffle_buffer=64,
                              seed=epoch_seed(self.config.runtime.seed, self.phase.name, epoch), deterministic=True,
                              verify=False)
        return read_images(self.context.data_dir, "train", options).map(lambda e: (e["image"], e["product_id"]))

    def score(self, scorer, group):
        return score_split(scorer, self.config, self.context.data_dir, group, None, verify=False)


KIND = PhaseKind(ToyPhase, "toy_kind:ToyTrainer", trains_the_embedding=True, summary="an embedder of 8x8 thumbnails")
'''


@pytest.fixture(scope="module")
def toy_package(tmp_path_factory) -> Path:
    """A folder holding the toy kind's module and its distribution's entry point, as
    `pip install` of a package declaring it would leave them."""
    folder = tmp_path_factory.mktemp("toy")
    (folder / "toy_kind.py").write_text(TOY_KIND)
    info = folder / "toy_kind-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-kind\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINTS}]\ntoy = toy_kind:KIND\n")
    return folder


def python(toy_package: Path, code: str, *arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": f"{toy_package}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *arguments], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=600)


def test_built_in_kinds_are_the_registry_and_the_config_union():
    from phases.config import PipelineConfig

    assert list(phase_kinds()) == ["classification", "siamese", "end_to_end"] == [kind.name for kind in BUILT_IN]
    union, tag = get_args(get_args(PipelineConfig.model_fields["phases"].annotation)[0])  # Annotated[Union, Field]
    assert set(get_args(union)) == {kind.config for kind in BUILT_IN} and tag.discriminator == "kind"


def test_a_kind_registered_by_entry_point_is_configured_trained_and_resumed(toy_package, ingested, tmp_path):
    code = """
        import json, sys
        from pathlib import Path
        from phases.config import PipelineConfig
        from phases.controller import run_phase
        from phases.errors import ConfigError
        from phases.unit import PhaseContext
        from pipeline.config_validation import validate

        data, work = Path(sys.argv[1]), Path(sys.argv[2])
        raw = {"data": {"source": str(data), "image_size": 32}, "phases": [{"name": "thumbs", "kind": "toy"}],
               "evaluation": {"batch_size": 64}, "runtime": {"seed": 1, "deterministic": True}}
        config = validate(raw, "toy.yaml")
        try:
            validate({**raw, "phases": [{"name": "thumbs", "kind": "tyo"}]}, "typo.yaml")
        except ConfigError as error:
            typo = str(error)
        first = run_phase(config.phases[0], config, PhaseContext(data_dir=data, work_dir=work))
        again = run_phase(config.phases[0], config, PhaseContext(data_dir=data, work_dir=work))
        print(json.dumps({"typo": typo, "rows": first.rows, "model": str(first.model_path), "sha256": first.model_sha256,
                          "again": again.resumed_after_epoch, "again_rows": again.rows,
                          "checkpoints": sorted(p.name for p in (work / "checkpoints").iterdir())}))
    """
    done = python(toy_package, code, str(ingested), str(tmp_path / "work"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "'toy'" in result["typo"] and "'classification'" in result["typo"]  # the error lists every kind
    assert [row["epoch"] for row in result["rows"]] == [1, 2]
    assert all(0 <= row["mar_at_10"] <= 1 and row["loss"] > 0 for row in result["rows"])
    assert result["rows"][1]["loss"] < result["rows"][0]["loss"]  # it trains
    assert Path(result["model"]).name == "embedder.keras" and Path(result["model"]).is_file()
    assert result["checkpoints"] == ["epoch-0000.json", "epoch-0000.keras", "epoch-0001.json", "epoch-0001.keras"]
    assert result["again"] == 2 and result["again_rows"] == result["rows"]  # finished: resumed after its last epoch


@pytest.mark.slow
def test_pvs_run_runs_a_registered_kind_end_to_end(toy_package, ingested, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({
        "description": "a toy kind",
        "data": {"source": str(ingested), "image_size": 32},
        "model": {"weights": "none", "freeze_batch_norm": False},
        "phases": [{"name": "thumbs", "kind": "toy"}],
        "evaluation": {"batch_size": 64},
        "runtime": {"seed": 1, "deterministic": True, "eager": True},
    }))
    code = "import sys; from pipeline.cli import main; sys.exit(main())"
    done = python(toy_package, code, "run", "--config", str(config), "--run-dir", str(tmp_path / "run"))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert states(output)["thumbs"] == "Completed" and states(output)["extraction"] == "Completed", output[-3000:]
    assert (tmp_path / "run" / "submission.csv").is_file()
    assert "thumbs" in (tmp_path / "run" / "scores.csv").read_text()
