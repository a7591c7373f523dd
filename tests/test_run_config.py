"""Which model a results folder's commands use when its recorded settings do not say (issue 13), and that every
example and recipe under config/ is a valid config."""

from __future__ import annotations

import yaml

from workflow_lib.common.config import run_config
from workflow_lib.common.layout import BUNDLED_MODEL, ResultsLayout


def test_a_folder_with_its_own_trained_model_keeps_it_when_no_source_is_recorded(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    cfg, _ = run_config(bare)
    assert cfg["model"]["source"] == "bundled"  # the default: nothing trained here
    assert ResultsLayout.of(bare, cfg).model == BUNDLED_MODEL

    trained = tmp_path / "trained"
    (trained / "model").mkdir(parents=True)
    (trained / "model" / "model.pt").write_bytes(b"weights")
    cfg, _ = run_config(trained)
    assert cfg["model"]["source"] == "train"
    assert ResultsLayout.of(trained, cfg).model == trained / "model" / "model.pt"
    # A recorded source always wins, and so does a config given on the command line.
    (trained / "config.yaml").write_text(yaml.safe_dump({"model": {"source": "bundled"}}))
    assert run_config(trained)[0]["model"]["source"] == "bundled"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"model": {"source": "train"}}))
    assert run_config(trained, other)[0]["model"]["source"] == "train"


def test_every_example_and_recipe_is_a_valid_config_on_top_of_the_defaults():
    from workflow_lib.common.config import REPO, merge, read_yaml, validate

    base = read_yaml(REPO / "config" / "config.yaml")
    files = sorted((REPO / "config" / "examples").glob("*.yaml")) + sorted((REPO / "config" / "recipes").glob("*.yaml"))
    assert any(f.name == "small_pair_member.yaml" for f in files)
    for f in files:
        validate(merge(base, read_yaml(f)), [str(f)])


def test_the_schema_is_a_valid_json_schema():
    """``validate`` does not check the schema itself on every command; this does, once."""
    import jsonschema

    from workflow_lib.common.config import SCHEMA, parse_yaml

    schema = parse_yaml(SCHEMA.read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert yaml.safe_load(SCHEMA.read_text()) == schema  # libyaml reads it as the pure-Python loader does


def test_the_default_conditions_are_the_ones_config_yaml_lists():
    """Python callers without a config (``QueryPlan()``) evaluate and calibrate on what the workflow's users get."""
    from workflow_lib.common.config import REPO, read_yaml
    from workflow_lib.evaluation.plan import DEFAULT_CONDITIONS, QueryPlan

    listed = QueryPlan.from_config(read_yaml(REPO / "config" / "config.yaml")["evaluate"]).conditions
    assert listed == DEFAULT_CONDITIONS and any(c.level_db for c in listed)
