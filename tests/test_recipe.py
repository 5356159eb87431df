"""Recipe validation and the pipeline that runs it."""

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from compressor.config import PruneStage, Recipe
from compressor.models import load_model
from compressor.recipe import RecipeError, load_recipe
from styleslim.cli import app
from styleslim.pipeline import run_recipe

TINY = {
    "name": "tiny",
    "loss_network": "random",
    "style_size": 64,
    "model": {
        "family": "transformer_net",
        "spec": {"conv1": 8, "conv2": 16, "trunk": 16, "res_inner": [16] * 5, "deconv1": 16, "deconv2": 8},
        "train": {"steps": 2, "batch_size": 1, "crop": 32, "checkpoint_every": 1},
    },
    "prune": {"ratio": 0.5},
    "distill": {"steps": 2, "batch_size": 1, "crop": 32, "checkpoint_every": 1},
}


def write(tmp_path, data) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_the_quickstart_is_bundled():
    assert "quickstart" in [p.stem for p in RECIPES]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_bundled_recipes_validate(path):
    assert load_recipe(path).name == path.stem


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, {**TINY, "prune": {"ratio": 0.5, "ratoi": 0.3}}))
    message = str(err.value)
    assert "recipe.yaml" in message and "prune.ratoi: unknown key" in message and "allowed keys: ratio" in message


def test_bad_values_name_key_and_allowed_values(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, {**TINY, "prune": {"ratio": 1.5, "scope": "everywhere"}}))
    message = str(err.value)
    assert "prune.ratio" in message and "less than 1" in message
    assert "prune.scope" in message and "'local' or 'global'" in message
    with pytest.raises(RecipeError) as err:  # a per-mode keep_float is told apart from a list: one error, its own
        load_recipe(write(tmp_path, {**TINY, "quantize": {"keep_float": {"statc": ["stem.0"]}}}))
    assert str(err.value).count("quantize.keep_float") == 1 and "'static', 'dynamic'" in str(err.value)
    with pytest.raises(RecipeError, match="not valid YAML"):
        (tmp_path / "broken.yaml").write_text("name: [unclosed")
        load_recipe(tmp_path / "broken.yaml")
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_set_overrides_apply_before_validation(tmp_path):
    recipe = load_recipe(write(tmp_path, TINY), ["prune.ratio=0.75", "distill.lr_schedule=cosine"])
    assert recipe.prune.ratio == 0.75 and recipe.distill.lr_schedule == "cosine"
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        load_recipe(write(tmp_path, TINY), ["prune.ratio"])


def test_pipeline_runs_stages_skips_unchanged_and_reruns_changed(tmp_path):
    recipe = load_recipe(write(tmp_path, TINY))
    run_dir = run_recipe(recipe, tmp_path / "runs", progress=False)
    teacher, pruned, distilled = (load_model(run_dir / d) for d in ("teacher", "pruned", "distilled"))
    assert teacher.current_spec().trunk == 16 and pruned.current_spec().trunk == 8
    assert distilled.current_spec() == pruned.current_spec()
    assert list((run_dir / "teacher" / "samples").glob("*.png"))
    stamps = {d: (run_dir / d / ".stage.json").stat().st_mtime_ns for d in ("teacher", "pruned", "distilled")}

    run_recipe(recipe, tmp_path / "runs", progress=False)
    assert {d: (run_dir / d / ".stage.json").stat().st_mtime_ns for d in stamps} == stamps

    changed = load_recipe(write(tmp_path, TINY), ["distill.lr=0.0005"])
    run_recipe(changed, tmp_path / "runs", progress=False)
    assert (run_dir / "teacher" / ".stage.json").stat().st_mtime_ns == stamps["teacher"]
    assert (run_dir / "distilled" / ".stage.json").stat().st_mtime_ns != stamps["distilled"]
    stamp = json.loads((run_dir / "distilled" / ".stage.json").read_text())
    assert stamp["status"] == "done" and stamp["seconds"] > 0  # each stage's time: the run's profile


def test_a_stage_dropped_from_the_recipe_leaves_its_old_artifacts_out_of_the_report(tmp_path):
    evaluate = {"size": 32, "latency_sizes": [32], "latency_runs": 3, "memory": False}
    exported = load_recipe(write(tmp_path, {**TINY, "export": {"formats": ["onnx"], "size": 32}, "evaluate": evaluate}))
    run_dir = run_recipe(exported, tmp_path / "runs", progress=False)
    report = json.loads((run_dir / "report.json").read_text())
    assert "exports/model-fp32.onnx" in [v["name"] for v in report["variants"]]

    # A new student and no export stage: the files in exports/ are the old student's, so they are not graded.
    retrained = load_recipe(write(tmp_path, {**TINY, "evaluate": evaluate}), ["distill.lr=0.0005"])
    run_recipe(retrained, tmp_path / "runs", progress=False)
    report = json.loads((run_dir / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["teacher", "pruned", "distilled"]
    assert [s["path"] for s in report["skipped"]] == ["exports"]
    assert "`exports`: left by an earlier run" in (run_dir / "report.md").read_text()


def test_run_cli_reports_recipe_errors(tmp_path):
    result = CliRunner().invoke(app, ["run", write(tmp_path, {**TINY, "evaluate": {"sizes": [1]}})])
    assert result.exit_code == 2 and "evaluate.sizes: unknown key" in result.output


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_configs_are_frozen_versioned_and_round_trip_through_yaml(path):
    recipe = load_recipe(path)
    assert recipe.version == 1
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    assert Recipe.model_validate(recipe.model_dump(mode="json")) == recipe
    with pytest.raises(ValidationError, match="frozen"):
        recipe.name = "other"
    if recipe.prune is not None:
        assert PruneStage.from_yaml(recipe.prune.to_yaml()) == recipe.prune
