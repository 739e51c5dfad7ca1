"""Recipe smoke runs, one table for every recipe: each row is a recipe x hparams file x overrides, run for
2 training steps per epoch on the committed samples through the real command line. Every run must write a
checkpoint, its test results and its best student exported to <output_folder>/student (EXPORTED); a row with
`resume` is then run again with one more epoch and must recover its first epoch and train only the second.
The exported students of one run per recipe family are then used from another directory, as a user would.
Adding a recipe adds rows (and its sample arguments in RECIPES), not a test file.

A row may use another row's output folder (e.g. a teacher run's checkpoints and waypoint snapshots) by
naming it in `needs`; `{out:<row id>}` in its overrides is replaced by that folder. Rows marked `slow` run
only with `make test-all` (each invocation costs ~10 s of CPU in imports alone, so the CI set keeps a few
rows per recipe family and the full matrix stays available).

Every run resolves hub names offline from a Hugging Face cache built here (HUB_MODELS, HUB_FOLDERS) and uses
its YAML's own `pretrained_source`, as a GPU user does: facebook/wav2vec2-large-lv60 (every speech recipe)
and facebook/wav2vec2-base (one TED-LIUM row's override) are tiny models with the real checkpoints'
LayerDrop 0.1 and layer-norm layouts; roberta-base and EleutherAI/pythia-1b are the committed tiny
pretrained RoBERTa and Pythia, tokenizers included.
"""

import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    SAMPLES,
    TEDLIUM_SAMPLE_OVERRIDES,
    offline_hub_cache,
    offline_hub_env,
    tiny_audio_checkpoint,
)


@dataclass(frozen=True)
class Run:
    recipe: str  # recipe folder, relative to the repository root
    hparams: str  # file under the recipe's hparams/
    overrides: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # row ids whose output folders this run reads
    expect: tuple[str, ...] = ()  # more files the run must write, relative to its output folder
    listings: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (glob, exactly the file names it must match)
    resume: bool = True  # run again with one more epoch: resumes, trains only epoch 2
    from_recipe_folder: bool = False  # start the command inside the recipe folder instead of the root
    slow: bool = False  # only with `make test-all`


# Arguments every run of a recipe gets: the committed sample data and tiny model, small batches.
RECIPES = {
    "recipes/TEDLIUM": (f"--data_folder={SAMPLES / 'TEDLIUM_release-3'}", *TEDLIUM_SAMPLE_OVERRIDES),
    "lm/Pile": (
        f"--data_prefix={SAMPLES / 'pile_mini' / 'document'}",
        "--seq_length=129",
        "--max_train_samples=48",
        "--valid_every_n_steps=6",  # 2 passes x 24 batches: 8 segments (SpeechBrain epochs)
        "--valid_samples=8",
        "--test_samples=8",
        "--batch_size=2",
        "--grad_accumulation_factor=1",
        "--precision=fp32",
        "--num_workers=0",
    ),
    # Classification recipes: micro-batches of 2 and one per optimizer step (the YAML defaults accumulate
    # several), fp32 on CPU, heads sized for the samples' label sets.
    "recipes/SLURP": (
        f"--data_folder={SAMPLES / 'SLURP'}",
        "--max_batch_items=2",
        "--grad_accumulation_factor=1",
        "--precision=fp32",
        "--num_workers=0",
        "--num_outputs=[5,4]",  # the sample's 5 scenarios and 4 actions
    ),
    "recipes/VoxCeleb1": (
        f"--data_folder={SAMPLES / 'VoxCeleb1'}",
        "--max_batch_items=2",
        "--grad_accumulation_factor=1",
        "--precision=fp32",
        "--num_workers=0",
        "--num_outputs=5",
        "--train_crop_seconds=1.0",
    ),
    "nlp/GLUE": ("--batch_size=2",),
    "nlp/IMDB": (
        f"--data_folder={SAMPLES / 'aclImdb'}",
        "--batch_size=2",
    ),
}
# The YAMLs' default hub names, as the offline cache holds them: a tiny random Wav2Vec2 in the real
# checkpoint's layer-norm layout and LayerDrop (speech recipes), or a committed tiny pretrained model of the
# same family with its tokenizer (text and LM recipes).
HUB_MODELS = {
    "facebook/wav2vec2-large-lv60": ("stable", 0.1),  # the speech recipes' default
    "facebook/wav2vec2-base": ("base", 0.1),  # group-norm layout: one TED-LIUM row's override
}
HUB_FOLDERS = {
    "roberta-base": SAMPLES / "models" / "tiny-roberta",  # nlp/GLUE, nlp/IMDB
    "EleutherAI/pythia-1b": SAMPLES / "models" / "tiny-pythia",  # lm/Pile
}
TINY_BIMAMBA2 = ("--headdim=32", "--d_state=16")
TEDLIUM_TEACHER = "--teacher_path={out:tedlium-teacher}/save"
TINY_MAMBA = ("--d_inner=128", "--dt_rank=4")
# What every run writes besides its checkpoints: the test results and the exported best student.
EXPORTED = ("test_metrics.json", "student/config.json", "student/model.safetensors", "student/README.md")


def classification_rows(name: str, recipe: str, teacher_yaml: str) -> dict[str, Run]:
    """The six runs of a classification recipe: the teacher (from inside the recipe folder, keeping a
    snapshot every step) and the five students, the teacher-reading ones on its output."""
    teacher = (*TINY_BIMAMBA2, f"--teacher_path={{out:{name}-teacher}}/save")
    needs = (f"{name}-teacher",)
    return {
        f"{name}-teacher": Run(
            recipe,
            teacher_yaml,
            ("--snapshot_every_steps=1",),
            expect=("test_predictions.csv",),
            listings=(("save/snapshots/*", ("step_1.ckpt", "step_2.ckpt")),),
            resume=False,  # its folder feeds the rows below
            from_recipe_folder=True,
        ),
        f"{name}-unguided": Run(recipe, "bimamba2_unguided.yaml", TINY_BIMAMBA2),
        f"{name}-trajectory": Run(recipe, "bimamba2_trajectory.yaml", TINY_BIMAMBA2),
        f"{name}-target": Run(recipe, "bimamba2_target.yaml", teacher, needs=needs),
        f"{name}-waypoint": Run(recipe, "bimamba2_waypoint.yaml", teacher, needs=needs),
        f"{name}-hybrid": Run(
            recipe, "bimamba2_hybrid.yaml", (*teacher, "--distill_until_step=1"), needs=needs
        ),
    }


RUNS = {
    "tedlium-teacher": Run(
        "recipes/TEDLIUM",
        "wav2vec2_ctc.yaml",
        ("--snapshot_every_steps=1",),
        expect=("wer_test.txt",),
        listings=(("save/snapshots/*", ("step_1.ckpt", "step_2.ckpt")),),
        resume=False,  # its folder feeds the rows below
        from_recipe_folder=True,
    ),
    "tedlium-unguided": Run("recipes/TEDLIUM", "bimamba2_unguided.yaml", TINY_BIMAMBA2),
    # Also the tracking options, given on the command line (test_tensorboard_logger_beside_train_log).
    "tedlium-trajectory": Run(
        "recipes/TEDLIUM",
        "bimamba2_trajectory.yaml",
        (*TINY_BIMAMBA2, "--logger=tensorboard", "--log_every_n_steps=1"),
    ),
    "tedlium-target": Run(
        "recipes/TEDLIUM",
        "bimamba2_target.yaml",
        (*TINY_BIMAMBA2, TEDLIUM_TEACHER),
        needs=("tedlium-teacher",),
    ),
    "tedlium-waypoint": Run(
        "recipes/TEDLIUM",
        "bimamba2_waypoint.yaml",
        (*TINY_BIMAMBA2, TEDLIUM_TEACHER),
        needs=("tedlium-teacher",),
    ),
    "tedlium-hybrid": Run(
        "recipes/TEDLIUM",
        "bimamba2_hybrid.yaml",
        (*TINY_BIMAMBA2, TEDLIUM_TEACHER, "--distill_until_step=1"),
        needs=("tedlium-teacher",),
    ),
    # Teacher and student in wav2vec2-base's group-norm layout (the defaults use large-lv60's stable one),
    # with SentencePiece BPE units trained on the sample (their reuse on resume: test_tedlium_units.py); one
    # row for both to keep the suite's time.
    "tedlium-base-bpe-trajectory": Run(
        "recipes/TEDLIUM",
        "bimamba2_trajectory.yaml",
        (
            *TINY_BIMAMBA2,
            "--pretrained_source=facebook/wav2vec2-base",
            "--units=bpe",
            "--num_outputs=40",
        ),
        listings=(("save/tokenizer/*", ("40_bpe.model", "40_bpe.vocab", "train.txt")),),
        resume=False,
    ),
    # LM: the teacher is the pretrained model itself (no teacher run).
    "pile-target": Run("lm/Pile", "mamba_target.yaml", TINY_MAMBA),
    "pile-unguided": Run("lm/Pile", "mamba_unguided.yaml", TINY_MAMBA, resume=False),
    "pile-hybrid": Run(
        "lm/Pile",
        "mamba_hybrid.yaml",
        (*TINY_MAMBA, "--distill_until_fraction=null", "--distill_until_step=1"),
        resume=False,
    ),
    "pile-mamba2": Run("lm/Pile", "mamba2_target.yaml", ("--headdim=32", "--d_state=16"), resume=False),
    **classification_rows("slurp", "recipes/SLURP", "wav2vec2_ic.yaml"),
    # The single-head option: one head over the intents (scenario_action), the sample's 5.
    "slurp-intent-unguided": Run(
        "recipes/SLURP",
        "bimamba2_unguided.yaml",
        (*TINY_BIMAMBA2, "--label_heads=[intent]", "--num_outputs=5"),
        resume=False,
    ),
    **classification_rows("voxceleb1", "recipes/VoxCeleb1", "wav2vec2_sid.yaml"),
}


# Text recipes: every hparams file on every sample task (GLUE SST-2, QNLI, QQP; IMDB). The CI set is
# SST-2 teacher + waypoint (epoch snapshots), QNLI trajectory (pairs), IMDB teacher; the rest slow.
TEXT_STUDENTS = ("unguided", "target", "trajectory", "waypoint", "hybrid")
TEXT_CI = {"glue-sst2-teacher", "glue-qnli-trajectory", "imdb-teacher"}


def text_rows(recipe: str, prefix: str, task_args: tuple[str, ...]) -> dict[str, Run]:
    """The teacher row (run from inside the recipe folder, no resume: students read it) and one row per
    student mode for one sample task."""
    teacher = f"{prefix}-teacher"
    rows = {
        teacher: Run(
            recipe, "roberta_finetune.yaml", task_args, resume=False, from_recipe_folder=True,
            listings=(("save/snapshots/*", ("step_2.ckpt",)),), slow=teacher not in TEXT_CI,
        )
    }  # fmt: skip
    for mode in TEXT_STUDENTS:
        needs = (teacher,) if mode in ("target", "waypoint", "hybrid") else ()
        extra = (f"--teacher_path={{out:{teacher}}}/save",) if needs else ()
        extra += ("--distill_until_step=1",) if mode == "hybrid" else ()
        row = f"{prefix}-{mode}"
        rows[row] = Run(
            recipe, f"linformer_{mode}.yaml", task_args + extra, needs=needs, slow=row not in TEXT_CI
        )
    return rows


for _task, _folder in (("sst2", "SST-2"), ("qnli", "QNLI"), ("qqp", "QQP")):
    RUNS.update(
        text_rows(
            "nlp/GLUE",
            f"glue-{_task}",
            (f"--task={_task}", f"--data_folder={SAMPLES / 'glue_data' / _folder}"),
        )
    )
RUNS.update(text_rows("nlp/IMDB", "imdb", ()))

# Rows kept out of CI (`make test-all` runs every hparams file of every recipe): each family keeps in CI its
# teacher run, a trajectory run or a run reading the teacher's output, and TED-LIUM its hub-name /
# group-norm-layout / BPE row, so that `make test` stays within 15 minutes on 2 cores.
SLOW_ROWS = {
    "tedlium-target",
    "tedlium-base-bpe-trajectory",
    "slurp-hybrid",
    "voxceleb1-target",
    "pile-mamba2",
    "tedlium-unguided",
    "tedlium-waypoint",
    "tedlium-hybrid",
    "slurp-unguided",
    "slurp-target",
    "slurp-waypoint",
    "voxceleb1-unguided",
    "voxceleb1-trajectory",
    "voxceleb1-waypoint",
    "voxceleb1-hybrid",
    "pile-unguided",
    "pile-hybrid",
}
for _row in SLOW_ROWS:
    RUNS[_row] = replace(RUNS[_row], slow=True)


def launch(run: Run, out: Path, epochs: int, outputs: dict[str, Path], env: dict[str, str]) -> None:
    """One debug invocation (2 training batches per epoch) of `run` into `out`."""
    recipe_dir = ROOT / run.recipe
    overrides = [re.sub(r"\{out:([\w-]+)\}", lambda m: str(outputs[m.group(1)]), o) for o in run.overrides]
    overridden = {o.split("=", 1)[0] for o in overrides}  # a row's --key=value replaces the recipe's
    cmd = [
        sys.executable,
        str(recipe_dir / "train.py"),
        f"hparams/{run.hparams}",
        *[a for a in RECIPES[run.recipe] if a.split("=", 1)[0] not in overridden],
        f"--output_folder={out}",
        "--device=cpu",
        "--debug",
        "--debug_persistently",
        f"--debug_epochs={epochs}",
        "--noprogressbar",
        *overrides,
    ]
    proc = subprocess.run(
        cmd, cwd=recipe_dir if run.from_recipe_folder else ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def train_epochs(out: Path) -> list[int]:
    """Epoch numbers logged in train_log.txt (one line per finished training epoch)."""
    text = (out / "train_log.txt").read_text()
    return [int(m) for m in re.findall(r"^epoch: (\d+)", text, flags=re.M)]


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory) -> dict[str, str]:
    """The environment of every run: HUB_MODELS in an offline Hugging Face cache, nothing else."""
    hf_home = tmp_path_factory.mktemp("hf")
    for name, (layout, layerdrop) in HUB_MODELS.items():
        folder = tiny_audio_checkpoint(tmp_path_factory.mktemp("model") / "m", layout, layerdrop)
        offline_hub_cache(hf_home, name, Path(folder))
    for name, folder in HUB_FOLDERS.items():
        offline_hub_cache(hf_home, name, folder)
    return offline_hub_env(hf_home)


@pytest.fixture(scope="module")
def first_epoch(tmp_path_factory, hub_env):
    """Runs a row's first epoch once per test session (rows needed by others are shared)."""
    done: dict[str, Path] = {}

    def get(row: str) -> Path:
        if row not in done:
            run = RUNS[row]
            for needed in run.needs:
                get(needed)
            out = tmp_path_factory.mktemp("recipe-runs") / row
            launch(run, out, 1, done, hub_env)
            done[row] = out
        return done[row]

    get.outputs, get.env = done, hub_env
    return get


@pytest.mark.parametrize(
    "row", [pytest.param(r, marks=pytest.mark.slow) if RUNS[r].slow else r for r in RUNS]
)
def test_recipe_run(row, first_epoch):
    run = RUNS[row]
    out = first_epoch(row)
    assert list((out / "save").glob("CKPT+*"))
    assert train_epochs(out) == [1]
    for name in (*EXPORTED, *run.expect):
        assert (out / name).exists(), name
    for pattern, names in run.listings:
        assert sorted(p.name for p in out.glob(pattern)) == sorted(names), pattern
    if run.recipe.startswith("recipes/") and re.search(
        r"_(target|trajectory|waypoint|hybrid)\.yaml$", run.hparams
    ):
        # a guided speech student and its teacher compute their common frozen feature encoder once
        shared = re.findall(r"Frozen front end shared in (\d+) of (\d+) ", (out / "log.txt").read_text())
        assert shared and all(hits == offers != "0" for hits, offers in shared), shared
    if run.resume:
        launch(run, out, 2, first_epoch.outputs, first_epoch.env)
        assert train_epochs(out) == [1, 2]


def test_slurp_reports_both_heads_and_the_intent(first_epoch):
    """The reference's metric (the mean of the scenario and action accuracies) picks the checkpoint; intent
    accuracy is reported beside it, and the predictions file has one target/prediction pair per head. The
    single-head option reports plain accuracy."""
    out = first_epoch("slurp-teacher")
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert {"ACC", "ACC_scenario", "ACC_action", "ACC_intent"} <= set(metrics)
    assert metrics["ACC"] == pytest.approx((metrics["ACC_scenario"] + metrics["ACC_action"]) / 2)
    assert metrics["ACC_intent"] <= min(metrics["ACC_scenario"], metrics["ACC_action"])
    with open(out / "test_predictions.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == [
        "ID", "scenario_target", "scenario_prediction", "action_target", "action_prediction", "correct",
    ]  # fmt: skip
    single = json.loads((first_epoch("slurp-intent-unguided") / "test_metrics.json").read_text())
    assert "ACC" in single and not any(key.startswith("ACC_") for key in single)


def test_tedlium_student_exports_and_transcribes_from_another_directory(first_epoch, tmp_path):
    """The student a TED-LIUM run (hub-name source) exported: recordings of two formats (the sample's SPH
    talk, two seconds of it as WAV) transcribed by the command line started outside the repository, one line
    each; Hugging Face's AutoModelForCTC gives load()'s logits with trust_remote_code=True, raises without."""
    import soundfile as sf
    from transformers import AutoModelForCTC

    from cald_brain.inference import load

    student = first_epoch("tedlium-trajectory") / "student"
    talk = next((SAMPLES / "TEDLIUM_release-3").rglob("*.sph"))
    audio, rate = sf.read(talk, frames=2 * 16000, dtype="float32")
    wav = tmp_path / "two_seconds.wav"
    sf.write(wav, audio, rate)
    proc = subprocess.run(
        [sys.executable, "-m", "cald_brain.inference", str(student), str(talk), str(wav)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(talk), str(wav)]
    card = (student / "README.md").read_text()
    assert "guidance mode: trajectory" in card and "- WER: " in card
    recipe = ROOT / "recipes" / "TEDLIUM"
    assert f"recipe: {recipe / 'train.py'}" in card
    assert f"hparams file: {recipe / 'hparams' / 'bimamba2_trajectory.yaml'}" in card

    wavs = torch.from_numpy(audio)[None]
    with torch.no_grad():
        expected = load(student).net(wavs, torch.ones(1)).logits
        remote = AutoModelForCTC.from_pretrained(student, trust_remote_code=True)(input_values=wavs).logits
    torch.testing.assert_close(remote, expected)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForCTC.from_pretrained(student)


# One run per recipe family and the inputs its exported student is given on the command line (the GLUE row's
# task is a sentence pair task: the command line gives single texts, load() pairs).
CLI_INPUTS = {
    "slurp-trajectory": lambda: sorted(str(f) for f in (SAMPLES / "SLURP").rglob("*.flac"))[:2],
    "voxceleb1-teacher": lambda: sorted(str(f) for f in (SAMPLES / "VoxCeleb1").rglob("*.wav"))[:2],
    "glue-qnli-trajectory": lambda: ["What is the capital of France?", "Paris is the capital of France."],
    "pile-target": lambda: ["Return a new list containing all items", "Open the file and"],
}
CHECK_SCRIPT = """\
import contextlib, io, json, sys
from cald_brain.inference import load
from cald_brain.inference.__main__ import main
found = {}
for folder, inputs in json.loads(sys.argv[1]).items():
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        found[folder] = [main([folder, *inputs, "--max-new-tokens=4"]), printed.getvalue()]
found["pair"] = load(sys.argv[2]).classify(["What is the capital?"], ["Paris is the capital."])[0]
print(json.dumps(found))
"""


def test_speech_text_and_lm_students_run_from_another_directory(first_epoch, tmp_path):
    """The exported students of a SLURP student run, a VoxCeleb1 teacher run (the teacher folder holds the
    transformer), a GLUE QNLI student run and a Pile student run, each given two inputs by the command line's
    main() in one Python process started outside the repository: one result per input, classifiers' labels
    from the run's label set; the QNLI student also classifies a sentence pair through load()."""
    folders = {row: first_epoch(row) / "student" for row in CLI_INPUTS}
    inputs = {str(folder): CLI_INPUTS[row]() for row, folder in folders.items()}
    qnli = str(folders["glue-qnli-trajectory"])
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT, json.dumps(inputs), qnli],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().split("\n")[-1])
    for row, folder in folders.items():
        status, printed = found[str(folder)]
        lines = printed.rstrip("\n").split("\n")
        assert status == 0 and [line.split("\t")[0] for line in lines] == inputs[str(folder)], printed
        if row != "pile-target":  # classifiers: label<TAB>probability (several heads: head=label<TAB>p ...)
            labels = json.loads((folder / "config.json").read_text())["id2label"].values()
            assert all(line.split("\t")[1].split("=", 1)[-1] in labels for line in lines), printed
    assert found["pair"][0] in ("entailment", "not_entailment")


def test_tensorboard_logger_beside_train_log(first_epoch):
    """`--logger=tensorboard --log_every_n_steps=1` on the command line: TensorBoard event files with a
    scalar per optimizer step for each loss term and the lr, and train_log.txt still written, with the same
    step lines."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cald_brain.run_logs import read_train_log

    out = first_epoch("tedlium-trajectory")
    step_lines = [line for line in read_train_log(out) if line.is_step_line]
    assert [line.x for line in step_lines][:2] == [1.0, 2.0]
    assert {"task", "ld", "ld_1", "teacher_task", "lr"} <= set(step_lines[0].stats["train"])
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for key in ("loss", "task", "ld", "ld_1", "teacher_task", "lr"):
        scalars = events.Scalars(f"train/{key}")
        assert [s.step for s in scalars][:2] == [1, 2], key
        assert scalars[0].value == pytest.approx(step_lines[0].stats["train"][key], rel=0.01), key
    assert "valid/WER" in events.Tags()["scalars"]


def test_teacher_run_ends_with_the_student_commands(first_epoch):
    """A teacher run's log ends with the commands of the students that read it (same data arguments, its
    save folder as --teacher_path) and names the SLURM helper."""
    out = first_epoch("tedlium-teacher")
    tail = (out / "log.txt").read_text().split("Teacher run finished")[-1]
    for name in ("bimamba2_target.yaml", "bimamba2_waypoint.yaml", "bimamba2_hybrid.yaml"):
        assert f"hparams/{name}" in tail, name
    assert "bimamba2_trajectory.yaml" not in tail and "bimamba2_unguided.yaml" not in tail
    assert f"--teacher_path={out}/save" in tail and "--output_folder" not in tail
    assert f"--data_folder={SAMPLES / 'TEDLIUM_release-3'}" in tail
    assert "tools/slurm/submit.py" in tail
