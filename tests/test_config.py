"""The pipeline config: YAML files validate, overrides address phases by name, errors name the field."""

import pytest

from phases.errors import ConfigError
from pipeline.config_files import load_config
from pipeline.config_overrides import parse_overrides
from pipeline.config_validation import validate

SEED = "configs/seed.yaml"


@pytest.fixture(autouse=True)
def repository_root(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).parents[1])


def test_seed_config_holds_every_number_of_the_recipe():
    config = load_config(SEED)
    top, block7a, full, siamese = config.phases
    assert (top.unfreeze, top.learning_rate, top.epochs) == ("none", 1e-2, 2)
    assert (block7a.unfreeze, block7a.unfreeze_from, block7a.learning_rate, block7a.epochs) == ("from", "block7a", 1e-4, 1)
    assert (full.unfreeze, full.learning_rate, full.epochs) == ("all", 1e-5, 2)
    assert [(s.margin, s.learning_rate, s.epochs) for s in siamese.margin_schedule] == [(0.5, 1e-5, 2), (0.75, 1e-5, 1), (0.75, 1e-4, 1)]
    assert (siamese.projection_dim, siamese.loss, siamese.distance_metric, siamese.labels) == (512, "triplet_semihard", "angular", "view")
    assert (config.data.image_size, config.model.weights, config.model.dropout) == (224, "imagenet", 0.2)
    assert config.model.freeze_batch_norm


def test_every_shipped_config_loads():
    from pathlib import Path

    for path in sorted(Path("configs").rglob("*.yaml")):
        assert load_config(path).description, path


def test_overrides_address_phases_by_name_and_parse_values():
    overrides = parse_overrides(["phases.full.epochs=3", "phases.siamese.margin_schedule.1.margin=0.6", "runtime.deterministic=true", "data.source=gs://b/p.csv"])
    config = load_config(SEED, overrides)
    assert config.phase("full").epochs == 3
    assert config.phase("siamese").margin_schedule[1].margin == 0.6
    assert config.runtime.deterministic is True and config.data.source == "gs://b/p.csv"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.colour": 1}, "data.colour: unknown key; the keys here are source, image_size, batch_size, shuffle_buffer, view_shuffle_buffer, ingest"),
        ({"phases.siamese.margin_schedule.0.colour": 1}, "phases.siamese.margin_schedule.0.colour: unknown key; the keys here are margin, learning_rate, epochs"),
        ({"phases.top.unfreeze_from": "block9a", "phases.top.unfreeze": "from"}, "phases.top.unfreeze_from: 'block9a' starts no layer of EfficientNetB0"),
        ({"phases.top.learning_rate": -0.1}, "phases.top.learning_rate: Input should be greater than 0"),
        ({"phases.full.epochs": "many"}, "phases.full.epochs: Input should be a valid integer"),
        ({"phases.siamese.margin_schedule.0.epochs": 0}, "phases.siamese.margin_schedule.0.epochs: Input should be greater than 0"),
        ({"data.image_size": 16}, "data.image_size: Input should be greater than or equal to 32"),
        ({"phases.block7a.unfreeze_from": None}, "unfreeze_from is needed with unfreeze: from"),
        ({"phases": []}, "phases: List should have at least 1 item"),
    ],
)
def test_bad_values_are_errors_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match="configs/seed.yaml: invalid config") as error:
        load_config(SEED, overrides)
    assert message in str(error.value)


def test_phase_list_rules():
    with pytest.raises(ConfigError, match="phase names must be unique; repeated: full"):
        load_config(SEED, {"phases.block7a.name": "full"})
    import yaml

    with open(SEED) as handle:
        raw = yaml.safe_load(handle)
    raw["phases"] = raw["phases"][3:] + raw["phases"][:3]
    with pytest.raises(ConfigError, match="trains the final embedding: keep one, as the last phase"):
        validate(raw, "reordered")
    raw["phases"] = raw["phases"][1:] + [raw["phases"][0], {**raw["phases"][0], "name": "again", "kind": "end_to_end"}]
    with pytest.raises(ConfigError, match="trains the final embedding: keep one, as the last phase"):
        validate(raw, "two embedding phases")


def test_override_errors_say_how_to_write_them():
    with pytest.raises(ConfigError, match="write KEY=VALUE"):
        parse_overrides(["phases.full.epochs"])
    with pytest.raises(ConfigError, match="no item 'fine' in configs/seed.yaml; there are top, block7a, full, siamese"):
        load_config(SEED, {"phases.fine.epochs": 1})


def test_yaml_is_read_safely(tmp_path):
    unsafe = tmp_path / "bad.yaml"
    unsafe.write_text("data: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(unsafe)


def test_runtime_strategy_precision_and_xla_settings():
    config = load_config(SEED)
    assert (config.runtime.strategy, config.runtime.precision, config.runtime.jit_compile) == ("auto", "float32", "auto")
    overrides = parse_overrides(["runtime.strategy=multi_worker", "runtime.precision=mixed_bfloat16", "runtime.jit_compile=true"])
    runtime = load_config(SEED, overrides).runtime
    assert (runtime.strategy, runtime.precision, runtime.jit_compile) == ("multi_worker", "mixed_bfloat16", True)
    assert load_config(SEED, parse_overrides(["runtime.jit_compile=false"])).runtime.jit_compile is False
    refused = {
        "runtime.strategy=horovod": "runtime.strategy: Input should be 'auto', 'default', 'mirrored', 'multi_worker' or 'tpu'",
        "runtime.precision=float16": "runtime.precision: Input should be 'float32', 'mixed_float16' or 'mixed_bfloat16'",
        "runtime.jit_compile=sometimes": "runtime.jit_compile",
        "runtime.jit_compile=true,runtime.deterministic=true": "jit_compile: true and deterministic: true do not go together",
        "runtime.jit_compile=true,runtime.eager=true": "eager: true runs them without tf.function",
        "runtime.strategy=tpu,runtime.precision=mixed_float16": "use mixed_bfloat16 with strategy: tpu",
    }
    for settings, message in refused.items():
        with pytest.raises(ConfigError, match="invalid config") as error:
            load_config(SEED, parse_overrides(settings.split(",")))
        assert message in str(error.value), settings
