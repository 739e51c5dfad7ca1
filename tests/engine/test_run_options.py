"""Run options and command-line overrides are type-checked at start-up, with messages naming the key and the
expected type (SpeechBrain leaves some run options, e.g. optimizer_step_limit, as strings)."""

from pathlib import Path

import pytest
import speechbrain as sb
from conftest import ROOT
from toy_task import fit, make_brain

from cald_brain.recipe import RecipeError, start_recipe, typed_run_options

RECIPE_DIR = str(ROOT / "recipes" / "TEDLIUM")


def test_optimizer_step_limit_from_the_command_line_is_an_integer(tmp_path):
    _, run_opts, _ = sb.parse_arguments(["x.yaml", "--optimizer_step_limit=5", "--device=cpu"])
    assert run_opts.optimizer_step_limit == "5"  # what SpeechBrain hands over
    run_opts = typed_run_options(run_opts)
    assert run_opts.optimizer_step_limit == 5 and "optimizer_step_limit" in run_opts.overridden_args
    brain = make_brain(tmp_path, run_opts={"optimizer_step_limit": "5", "noprogressbar": True})
    fit(brain)  # a Brain given the string directly converts it too
    assert brain.optimizer_step == 5


def test_bad_run_option_names_it_and_the_type(tmp_path):
    _, run_opts, _ = sb.parse_arguments(["x.yaml", "--optimizer_step_limit=abc"])
    with pytest.raises(RecipeError, match="--optimizer_step_limit must be an integer, got 'abc'"):
        typed_run_options(run_opts)
    with pytest.raises(TypeError, match="run option optimizer_step_limit must be an integer, got 'abc'"):
        make_brain(tmp_path, run_opts={"optimizer_step_limit": "abc"})


@pytest.mark.parametrize(
    "key", ["alpha_ld", "lr", "kd_temperature", "max_batch_items", "teacher_update_cycle"]
)
def test_wrong_typed_override_names_key_and_type(key, tmp_path):
    argv = [
        "hparams/bimamba2_trajectory.yaml",
        "--data_folder=/nowhere",
        f"--output_folder={tmp_path / 'out'}",
        f"--{key}=abc",
    ]
    expected = "an integer" if key in ("max_batch_items", "teacher_update_cycle") else "a number"
    with pytest.raises(RecipeError, match=f"--{key}=abc: {key} must be {expected} .*got 'abc'"):
        start_recipe(RECIPE_DIR, argv)
    assert not (tmp_path / "out").exists()  # stopped before touching the output folder


def test_well_typed_overrides_pass(tmp_path):
    from cald_brain.recipe import check_override_types

    path = str(Path(RECIPE_DIR) / "hparams" / "bimamba2_hybrid.yaml")
    check_override_types(
        path, "lr: 1e-4\nalpha_ld: 3\ndistill_until_step: 10\nteacher_path: /x\nsplit: legacy"
    )
    with pytest.raises(RecipeError, match="distill_until_step must be an integer"):
        check_override_types(path, "distill_until_step: 0.5")
    with pytest.raises(RecipeError, match="skip_prep must be true or false"):
        check_override_types(path, "skip_prep: 3")
