"""tools/mini_cald.py: the run plan (teacher first, students reading it), parallel execution with reuse and
failure handling, and the mean ± sd table, on a stand-in recipe that writes what a recipe run writes."""

import json
import statistics
import sys
from pathlib import Path

import pytest
from conftest import load_repo_script

mini_cald = load_repo_script("tools/mini_cald.py", "mini_cald_tool")

# A recipe stand-in: checks that a teacher-reading student starts after its teacher finished, fails where
# asked, and leaves train_log.txt, hyperparams.yaml and test_metrics.json as a recipe run does. Its metric
# is 10 x seed + the mode's position, so every mean and deviation is known.
STAND_IN = """
import json, sys
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[2:])
mode = sys.argv[1].removeprefix("hparams/").removesuffix(".yaml").split("_")[-1]
seed = int(args["seed"])
with open(Path(__file__).with_name("calls.txt"), "a") as calls:
    calls.write(f"{mode} {seed} {' '.join(sys.argv[2:])}\\n")
if "teacher_path" in args and not Path(args["teacher_path"]).with_name("test_metrics.json").exists():
    sys.exit(3)
if Path(__file__).with_name(f"fail_{mode}_{seed}").exists():
    sys.exit(1)
out = Path(args["output_folder"])
out.mkdir(parents=True, exist_ok=True)
ld = "" if mode in ("teacher", "unguided") else f", train ld: {0.5 / seed}"
(out / "train_log.txt").write_text(
    f"epoch: 1, steps: 5 - train loss: 1.0{ld} - valid loss: 1.0, valid WER: 50.0\\n"
    f"epoch: 2, steps: 10 - train loss: 0.5{ld} - valid loss: 0.9, valid WER: 40.0\\n"
    "Epoch loaded: 2 - test loss: 0.9, test WER: 40.0\\n"
)
header = f"# Generated from:\\n# /r/recipes/X/hparams/{mode}.yaml\\n"
(out / "hyperparams.yaml").write_text(f"{header}seed: {seed}\\n")
modes = ["teacher", "unguided", "target", "trajectory", "waypoint", "hybrid"]
(out / "test_metrics.json").write_text(json.dumps({"WER": 10 * seed + modes.index(mode)}))
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> Path:
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "train.py").write_text(STAND_IN)
    family = mini_cald.Family(
        recipe=str(recipe),
        teacher_hparams="teacher.yaml",
        student_hparams="student_{mode}.yaml",
        pretrained_source=tmp_path,
        task_args=("--data_folder=/data",),
        common=("--device=cpu",),
        teacher_args=("--snapshot_every_steps=2",),
        student_args=("--headdim=32",),
        trajectory_args=("--teacher_lr=0.1",),
        hybrid_fraction=0.25,
        metric="WER",
        metric_label="test WER %",
        percent=False,
        lower_is_better=True,
    )
    monkeypatch.setitem(mini_cald.FAMILIES, "fake", family)
    return recipe


def calls(recipe: Path) -> list[list[str]]:
    made = recipe / "calls.txt"
    return [line.split() for line in made.read_text().splitlines()] if made.exists() else []


def test_students_follow_their_teacher_and_the_table_gives_mean_and_sd(stand_in, tmp_path, capsys):
    mini_cald.main(["--family", "fake", "--seeds", "3", "--jobs", "3", "--out", str(tmp_path / "out")])
    made = calls(stand_in)
    assert sorted((mode, int(seed)) for mode, seed, *_ in made) == sorted(
        (mode, seed) for mode in mini_cald.MODES for seed in (1, 2, 3)
    )
    by_run = {(mode, int(seed)): args for mode, seed, *args in made}
    teacher = str(tmp_path / "out" / "fake" / "teacher" / "seed2" / "save")
    assert f"--teacher_path={teacher}" in by_run["target", 2]
    assert "--distill_until_step=null" in by_run["hybrid", 1]
    assert "--distill_until_fraction=0.2500" in by_run["hybrid", 1]
    assert "--teacher_lr=0.1" in by_run["trajectory", 3] and "--teacher_lr=0.1" not in by_run["unguided", 3]
    assert "--snapshot_every_steps=2" in by_run["teacher", 1] and "--headdim=32" not in by_run["teacher", 1]
    assert all("--device=cpu" in args and "--data_folder=/data" in args for args in by_run.values())

    root = tmp_path / "out" / "fake"
    text = (root / "mini_cald.md").read_text()
    assert text in capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # teacher: 10, 20, 30; hybrid: 15, 25, 35
    assert "| 20.0 ± 10.0 | 10.0, 20.0, 30.0 |" in rows[mini_cald.MODE_LABELS["teacher"]]
    assert "| 25.0 ± 10.0 | 15.0, 25.0, 35.0 |" in rows[mini_cald.MODE_LABELS["hybrid"]]
    final_ld = statistics.fmean(0.5 / seed for seed in (1, 2, 3))
    assert f"| {final_ld:.3f} |" in rows[mini_cald.MODE_LABELS["waypoint"]]
    assert "| - |" in rows[mini_cald.MODE_LABELS["unguided"]]  # no LD term
    saved = json.loads((root / "mini_cald.json").read_text())
    assert [r["value"] for r in saved["results"]["target"]] == [12, 22, 32]
    assert saved["results"]["trajectory"][0]["ld"] == [[5.0, 0.5], [10.0, 0.5]]
    assert (root / "mini_cald.png").stat().st_size > 0
    assert (root / "logs" / "teacher-seed1.log").read_text().startswith("$ ")


def test_finished_runs_are_reused(stand_in, tmp_path):
    args = ["--family", "fake", "--seeds", "2", "--modes", "unguided", "target", "--out", str(tmp_path / "o")]
    mini_cald.main(args)
    assert len(calls(stand_in)) == 6  # the teacher always runs: the students read it
    mini_cald.main(args)
    assert len(calls(stand_in)) == 6
    family = mini_cald.FAMILIES["fake"]
    changed = mini_cald.replace(family, student_args=("--headdim=16",))
    with pytest.raises(SystemExit, match="finished with other settings than planned now"):
        mini_cald.execute(mini_cald.plan(changed, "fake", [1], ["unguided"], tmp_path / "o", False), 1, 1)


def test_a_failed_teacher_stops_its_own_students_only(stand_in, tmp_path):
    (stand_in / "fail_teacher_2").write_text("")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        mini_cald.main(
            ["--family", "fake", "--seeds", "2", "--modes", "target", "unguided", "--out", str(out)]
        )
    message = str(stop.value)
    assert "teacher seed 2" in message and str(out / "fake" / "logs" / "teacher-seed2.log") in message
    assert "target seed 2" in message  # not run: its teacher failed
    ran = {(mode, int(seed)) for mode, seed, *_ in calls(stand_in)}
    assert ran == {("teacher", 1), ("teacher", 2), ("target", 1), ("unguided", 1), ("unguided", 2)}


def test_every_family_plans_real_recipe_commands():
    """Each family's commands name an existing train.py and hparams files, and the sample data folders."""
    for name, family in mini_cald.FAMILIES.items():
        for run in mini_cald.plan(family, name, [1], list(mini_cald.MODES), Path("/tmp/x"), quick=True):
            script = Path(run.command[1])
            assert script.is_file(), script
            assert (script.parent / run.command[2]).is_file(), run.command[2]
            data = [a.split("=", 1)[1] for a in run.command if a.startswith("--data_folder=")]
            assert data and Path(data[0]).is_dir(), data
            assert run.command[0] == sys.executable and "--number_of_epochs=1" in run.command
