"""Recipe start-up: hparams lookup from the repo root or the recipe folder, clear YAML and override errors,
and an output folder that refuses a run of another kind (task, guidance mode, data) once it holds results."""

import importlib.util
import json

import pytest
from conftest import ROOT

from cald_brain.recipe import (
    RecipeError,
    check_logger,
    check_output_folder,
    load_hparams,
    next_steps_text,
    resolve_hparams_path,
    start_recipe,
    student_commands,
)
from cald_brain.run_control import IDENTITY_NAME


@pytest.fixture()
def recipe_dir(tmp_path):
    (tmp_path / "hparams").mkdir()
    (tmp_path / "hparams" / "x.yaml").write_text("data_folder: !PLACEHOLDER\nlr: 0.1\nn: !ref <lr>\n")
    return tmp_path


def test_hparams_resolved_against_recipe_folder(recipe_dir, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert resolve_hparams_path("hparams/x.yaml", str(recipe_dir)) == str(recipe_dir / "hparams" / "x.yaml")


def test_hparams_from_cwd_win(recipe_dir, monkeypatch):
    monkeypatch.chdir(recipe_dir)
    assert resolve_hparams_path("hparams/x.yaml", "/nonexistent") == "hparams/x.yaml"


def test_missing_hparams_lists_available(recipe_dir):
    with pytest.raises(RecipeError, match="x.yaml"):
        resolve_hparams_path("hparams/nope.yaml", str(recipe_dir))


def test_unknown_override_names_file_and_key(recipe_dir):
    path = str(recipe_dir / "hparams" / "x.yaml")
    with pytest.raises(RecipeError, match=r"x\.yaml.*bogus_key"):
        load_hparams(path, {"data_folder": "/d", "bogus_key": 1})


def test_placeholder_tells_how_to_fill_it(recipe_dir):
    path = str(recipe_dir / "hparams" / "x.yaml")
    with pytest.raises(RecipeError, match="data_folder.*--data_folder"):
        load_hparams(path, {})
    assert load_hparams(path, {"data_folder": "/d", "lr": 0.5})["n"] == 0.5


def test_an_override_given_twice_names_the_key(recipe_dir):
    from cald_brain.recipe import check_override_types

    path = str(recipe_dir / "hparams" / "x.yaml")
    with pytest.raises(RecipeError, match="--lr given more than once"):
        check_override_types(path, "lr: 1\ndata_folder: /d\nlr: 2")


GLUE_YAML = str(ROOT / "nlp" / "GLUE" / "hparams" / "roberta_finetune.yaml")


def test_a_finished_folder_refuses_a_run_of_another_task(tmp_path):
    out = tmp_path / "out"
    sst2 = f"task: sst2\ndata_folder: /glue/SST-2\noutput_folder: {out}"
    check_output_folder(str(out), GLUE_YAML, sst2)
    assert json.loads((out / IDENTITY_NAME).read_text())["task"] == "sst2"
    check_output_folder(str(out), GLUE_YAML, sst2)  # the same run again: resumes
    (out / "test_metrics.json").write_text("{}")  # the SST-2 run finished
    qnli = f"task: qnli\ndata_folder: /glue/SST-2\noutput_folder: {out}"
    with pytest.raises(RecipeError, match="task: 'sst2' there, 'qnli' now.*new --output_folder.*delete"):
        check_output_folder(str(out), GLUE_YAML, qnli)
    assert json.loads((out / IDENTITY_NAME).read_text())["task"] == "sst2"


def test_a_folder_without_results_records_the_corrected_settings(tmp_path, caplog):
    out = tmp_path / "out"
    check_output_folder(str(out), GLUE_YAML, f"task: sst2\ndata_folder: /wrong\noutput_folder: {out}")
    check_output_folder(str(out), GLUE_YAML, f"task: sst2\ndata_folder: /right\noutput_folder: {out}")
    assert "data_folder: '/wrong' there, '/right' now" in caplog.text
    assert json.loads((out / IDENTITY_NAME).read_text())["data_folder"] == "/right"


def test_start_recipe_checks_the_folder_before_loading_anything(tmp_path):
    out = tmp_path / "out"
    (out / "save" / "CKPT+2026-01-01+00-00-00+00").mkdir(parents=True)
    (out / IDENTITY_NAME).write_text(json.dumps({"guidance_mode": "target"}))
    argv = ["hparams/bimamba2_trajectory.yaml", "--data_folder=/nowhere", f"--output_folder={out}"]
    with pytest.raises(RecipeError, match="guidance_mode: 'target' there, 'trajectory' now"):
        start_recipe(str(ROOT / "recipes" / "TEDLIUM"), argv)


def test_a_teacher_of_another_task_is_refused(tmp_path):
    teacher = tmp_path / "sst2-teacher"
    check_output_folder(
        str(teacher), GLUE_YAML, f"task: sst2\ndata_folder: /glue/SST-2\noutput_folder: {teacher}"
    )
    (teacher / "save").mkdir()
    student_yaml = str(ROOT / "nlp" / "GLUE" / "hparams" / "linformer_target.yaml")
    student = tmp_path / "student"
    overrides = f"task: qnli\ndata_folder: /glue/QNLI\noutput_folder: {student}\nteacher_path: {teacher}/save"
    with pytest.raises(RecipeError, match=r"teacher_path=.*/save was trained with task='sst2'.*task='qnli'"):
        check_output_folder(str(student), student_yaml, overrides)
    check_output_folder(str(student), student_yaml, overrides.replace("qnli", "sst2"))  # its own task: fine


def test_teacher_run_names_the_students_that_need_it(tmp_path, monkeypatch):
    """After a teacher run, the commands of the students with `teacher_path`, with the same arguments but the
    teacher's output folder replaced by `--teacher_path`; the SLURM helper is named."""
    hparams = tmp_path / "recipe" / "hparams"
    hparams.mkdir(parents=True)
    (hparams / "teacher.yaml").write_text("guidance_mode: unguided\n")
    (hparams / "unguided.yaml").write_text("mixer: bimamba2\n")
    (hparams / "target.yaml").write_text("mixer: bimamba2\nteacher_path: !ref results/<seed>/save\n")
    (hparams / "waypoint.yaml").write_text("mixer: bimamba2\nteacher_path: results/save\n")
    monkeypatch.chdir(tmp_path / "recipe")
    argv = ["train.py", "hparams/teacher.yaml", "--data_folder=/d x", "--output_folder", "/o", "--seed=7"]
    assert student_commands(argv, "/o/save") == [
        "python train.py hparams/target.yaml '--data_folder=/d x' --seed=7 --teacher_path=/o/save",
        "python train.py hparams/waypoint.yaml '--data_folder=/d x' --seed=7 --teacher_path=/o/save",
    ]
    text = next_steps_text(argv, "/o/save")
    assert text.splitlines()[1:3] == [f"  {c}" for c in student_commands(argv, "/o/save")]
    assert "tools/slurm/submit.py" in text


def test_unknown_or_missing_logger_is_a_clear_error(recipe_dir):
    path = str(recipe_dir / "hparams" / "x.yaml")
    with pytest.raises(RecipeError, match="choose one of file, tensorboard, wandb"):
        check_logger(path, {"data_folder": "/d", "logger": "neptune"})
    check_logger(path, {"data_folder": "/d"})  # no `logger` key: the file logger alone
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(RecipeError, match=r"pip install wandb"):
            check_logger(path, {"data_folder": "/d", "logger": "wandb"})
