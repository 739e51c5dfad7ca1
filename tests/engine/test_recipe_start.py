"""Recipe start-up: hparams lookup from the repo root or the recipe folder, and clear YAML errors."""

import pytest

from cald_brain.recipe import RecipeError, load_hparams, resolve_hparams_path


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
