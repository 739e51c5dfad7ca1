"""The hparams files of the recipes must not drift apart, checked on their values (docs/ENGINE.md, "Shared
hparams keys").

Each YAML file stays complete (a user opening it sees everything it runs), so the settings the files of a
recipe folder share are written in each. Every file's top level is read as YAML data, HyperPyYAML's tags kept
as opaque values (`!ref <lr>` is the value "!ref <lr>", nothing is built) and comments ignored; then:

- within a folder, a key held by several files has the same value in all of them, unless the folder's
  `hparams/VARYING` declares it, and a declared key must actually differ;
- across folders, one concept has one key name: an argument a class (or a loader option) takes is fed from
  a top-level key of the same name in every folder, a retired name is an error, and every file holds the keys
  the engine reads (EVERY_FILE);
- every file checkpoints through AtomicCheckpointer.

Recipe folders are found by their `hparams/` folder: a new recipe needs no edit here.
"""

import functools
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

RECIPE_TREES = ("recipes", "nlp", "lm")  # where recipe folders live
VARYING_FILE = "VARYING"  # beside the YAML files: the keys those files set differently

# Keys every hparams file holds: what the engine and every task read, under one name.
EVERY_FILE = frozenset(
    {
        "seed",
        "output_folder",
        "save_folder",
        "train_log",
        "test_metrics_file",
        "pretrained_source",
        "precision",
        "num_workers",
        "eval_batch_size",
        "grad_accumulation_factor",
        "max_grad_norm",
        "number_of_epochs",
        "ckpt_interval_minutes",
        "checkpoints_to_keep",
        "lr",
        "weight_decay",
        "opt_class",
        "lr_scheduler",
        "guidance_mode",
        "modules",
        "student",
        "epoch_counter",
        "checkpointer",
        "train_logger",
        "logger",
        "log_every_n_steps",
        "train_dataloader_opts",
        "valid_dataloader_opts",
        "test_dataloader_opts",
    }
)
# Names a concept had in one family before it got its one name (docs/ENGINE.md lists the renames).
RETIRED = {
    "batch_max_samples": "max_batch_samples",
    "batch_max_quad_samples": "max_batch_quad_samples",
    "output_neurons": "num_outputs",
    "num_intents": "num_outputs",
    "num_speakers": "num_outputs",
    "encoder_config": "encoder_overrides",
    "lr_decay_steps": "decay_steps",
}


@dataclass(frozen=True)
class Tagged:
    """A HyperPyYAML-tagged node, kept as data: its tag (e.g. `!ref`, `!new:torch.optim.AdamW`) and value."""

    tag: str
    value: Any

    def __repr__(self) -> str:
        return f"{self.tag} {self.value!r}"


class _OpaqueTagLoader(yaml.CSafeLoader):
    """PyYAML's safe loader with every `!...` tag kept as a Tagged value."""


def _tagged(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        return Tagged("!" + suffix, loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Tagged("!" + suffix, loader.construct_sequence(node, deep=True))
    return Tagged("!" + suffix, loader.construct_scalar(node))


_OpaqueTagLoader.add_multi_constructor("!", _tagged)


def recipe_dirs(root: Path) -> list[Path]:
    """Every folder with an hparams/ folder under the recipe trees of `root`."""
    return sorted(p.parent for tree in RECIPE_TREES for p in (root / tree).glob("**/hparams"))


@functools.cache
def _parse(text: str) -> Any:
    """YAML text as data (cached by content: the tests below check many unchanged copies; never mutated)."""
    return yaml.load(text, _OpaqueTagLoader)


def load_top_level(path: Path) -> dict[str, Any]:
    """The file's top-level keys and their values (tags opaque, comments gone)."""
    data = _parse(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: the top level is not a mapping"
    return data


def load_folder(recipe_dir: Path) -> dict[str, dict[str, Any]]:
    """File name -> its top level, for every YAML file of the recipe's hparams/."""
    return {p.name: load_top_level(p) for p in sorted((recipe_dir / "hparams").glob("*.yaml"))}


def read_varying(hparams_dir: Path) -> dict[str, frozenset[str]]:
    """The folder's VARYING declaration: key -> the files that set their own value (empty: every file may).

    One key per line: `key` (the files do not all agree) or `key: a.yaml b.yaml` (only these files differ
    from the others, which agree); `#` starts a comment. No file: nothing varies."""
    path = hparams_dir / VARYING_FILE
    varying: dict[str, frozenset[str]] = {}
    if not path.exists():
        return varying
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"(\w+)\s*(?::\s*(.*))?", line)
        assert match, f"{path}:{number}: expected `key` or `key: file.yaml ...`, got {line!r}"
        varying[match.group(1)] = frozenset((match.group(2) or "").split())
    return varying


def _groups(values: dict[str, Any]) -> list[tuple[Any, list[str]]]:
    """Files grouped by equal value, largest group first."""
    groups: list[tuple[Any, list[str]]] = []
    for name, value in values.items():
        for group_value, names in groups:
            if group_value == value:
                names.append(name)
                break
        else:
            groups.append((value, [name]))
    return sorted(groups, key=lambda group: -len(group[1]))


def _describe(groups: list[tuple[Any, list[str]]]) -> str:
    return "; ".join(f"{', '.join(names)}: {str(value)[:100]}" for value, names in groups)


def folder_problems(recipe_dir: Path) -> list[str]:
    """Shared keys of the folder's hparams files whose values disagree, and VARYING entries that are wrong."""
    hparams_dir = recipe_dir / "hparams"
    files = load_folder(recipe_dir)
    varying = read_varying(hparams_dir)
    problems = []
    for key, own in sorted(varying.items()):
        holders = {name for name, data in files.items() if key in data}
        if len(holders) < 2:
            problems.append(f"{hparams_dir / VARYING_FILE}: `{key}` is not in two hparams files: remove it")
        for name in sorted(own - holders):
            problems.append(f"{hparams_dir / VARYING_FILE}: `{key}`: {name} does not set it")
    for key in sorted({key for data in files.values() for key in data}):
        values = {name: data[key] for name, data in files.items() if key in data}
        if len(values) < 2:
            continue
        own = varying.get(key)
        if own is None:
            if len(groups := _groups(values)) > 1:
                problems.append(
                    f"{hparams_dir}: `{key}` differs ({_describe(groups)}): set the same value in every "
                    f"file, or declare `{key}` in {VARYING_FILE}"
                )
        elif not own:
            if len(groups := _groups(values)) == 1:
                problems.append(
                    f"{hparams_dir / VARYING_FILE}: `{key}` is the same in every file ({_describe(groups)}): "
                    "remove it"
                )
        else:
            groups = _groups({name: value for name, value in values.items() if name not in own})
            if len(groups) > 1:
                problems.append(
                    f"{hparams_dir}: `{key}` differs among the files {VARYING_FILE} does not name for it "
                    f"({_describe(groups)}): make them agree"
                )
            elif groups:
                for name in sorted(own & values.keys()):
                    if values[name] == groups[0][0]:
                        problems.append(
                            f"{hparams_dir / VARYING_FILE}: `{key}`: {name} holds the same value as the "
                            f"other files ({str(values[name])[:100]}): remove {name} from the line"
                        )
    return problems


def _refs(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """(where, top-level key) for every `!ref <key>` below the top level: where = the keys, list indices and
    class tags leading to it, e.g. ("train_sampler", "!name:cald_brain.data.DurationBatchSampler",
    "max_batch_items")."""
    if isinstance(value, Tagged):
        if value.tag == "!ref":
            match = re.fullmatch(r"<(\w+)>", str(value.value).strip())
            if match and len(path) > 1:  # a top-level alias (`head_lr: !ref <lr>`) feeds no argument
                yield path, match.group(1)
        else:
            yield from _refs(value.value, (*path, value.tag))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _refs(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _refs(item, (*path, str(index)))


def naming_problems(recipe_dirs: list[Path]) -> list[str]:
    """Concepts named differently in different files: retired names, missing engine keys, and one argument
    (same place, same class) fed from top-level keys of different names."""
    problems = []
    fed_by: dict[tuple[str, ...], dict[str, set[str]]] = {}  # where -> top-level key -> recipe folders
    for recipe_dir in recipe_dirs:
        for name, data in load_folder(recipe_dir).items():
            file = (recipe_dir / "hparams" / name).as_posix()
            problems += [
                f"{file}: `{old}` is called `{RETIRED[old]}`" for old in sorted(RETIRED.keys() & data)
            ]
            problems += [
                f"{file}: no `{key}` (every hparams file has it, under this name: docs/ENGINE.md)"
                for key in sorted(EVERY_FILE - data.keys())
            ]
            for top_key, value in data.items():
                for where, ref in _refs(value, (top_key,)):
                    fed_by.setdefault(where, {}).setdefault(ref, set()).add(recipe_dir.as_posix())
    for where, names in sorted(fed_by.items()):
        if len(names) > 1:
            problems.append(
                f"`{'.'.join(where)}` is fed by differently named keys (one concept, one name): "
                + "; ".join(
                    f"`{ref}` in {', '.join(sorted(folders))}" for ref, folders in sorted(names.items())
                )
            )
    return problems


RECIPE_DIRS = recipe_dirs(ROOT)
RECIPE_IDS = [d.relative_to(ROOT).as_posix() for d in RECIPE_DIRS]


@pytest.mark.parametrize("recipe_dir", RECIPE_DIRS, ids=RECIPE_IDS)
def test_shared_values_agree(recipe_dir):
    problems = folder_problems(recipe_dir)
    assert not problems, "\n".join(problems)


def test_one_concept_has_one_name():
    problems = naming_problems(RECIPE_DIRS)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("recipe_dir", RECIPE_DIRS, ids=RECIPE_IDS)
def test_checkpoints_are_written_atomically(recipe_dir):
    """Every hparams file checkpoints through AtomicCheckpointer (a kill mid-write never leaves a checkpoint
    that looks complete), not SpeechBrain's plain Checkpointer."""
    plain = [
        name
        for name, data in load_folder(recipe_dir).items()
        if getattr(data.get("checkpointer"), "tag", None) != "!new:cald_brain.checkpoints.AtomicCheckpointer"
    ]
    assert not plain, f"{recipe_dir / 'hparams'}: use cald_brain.checkpoints.AtomicCheckpointer in {plain}"


# The check itself, on copies of the recipes' hparams folders.


def copy_recipes(root: Path) -> Path:
    """Every recipe's hparams/ folder copied under `root`, same layout; returns `root`."""
    for recipe_dir in RECIPE_DIRS:
        shutil.copytree(recipe_dir / "hparams", root / recipe_dir.relative_to(ROOT) / "hparams")
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{path}: {old!r} not found"
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_a_new_recipe_folder_is_checked_without_editing_this_test(tmp_path):
    copy_recipes(tmp_path)
    shutil.copytree(tmp_path / "recipes" / "SLURP", tmp_path / "recipes" / "NewRecipe")
    found = recipe_dirs(tmp_path)
    assert tmp_path / "recipes" / "NewRecipe" in found and len(found) == len(RECIPE_DIRS) + 1
    assert [problem for d in found for problem in folder_problems(d)] == []
    assert naming_problems(found) == []


def test_a_changed_shared_value_names_the_file_and_the_key(tmp_path):
    new = copy_recipes(tmp_path) / "recipes" / "NewRecipe"
    shutil.copytree(tmp_path / "recipes" / "SLURP", new)
    hybrid = new / "hparams" / "bimamba2_hybrid.yaml"
    edit(hybrid, "# Seed needs to be set", "# a comment changes nothing\n# Seed needs to be set")
    assert folder_problems(new) == []
    edit(hybrid, "    bucket_size: 1024\n", "    bucket_size: 512\n")  # inside a block
    edit(hybrid, "\nalpha_ld: 15.0", "\nalpha_ld: 16.0")
    problems = folder_problems(new)
    assert len(problems) == 2, problems
    assert all("bimamba2_hybrid.yaml: " in p and "NewRecipe/hparams" in p for p in problems), problems
    assert "`alpha_ld` differs" in problems[0] and "`train_sampler` differs" in problems[1], problems


def test_the_student_files_are_compared_with_each_other(tmp_path):
    """A key VARYING lets the teacher file set on its own still agrees across the student files."""
    tedlium = copy_recipes(tmp_path) / "recipes" / "TEDLIUM"
    edit(
        tedlium / "hparams" / "bimamba2_waypoint.yaml",
        "            residual_inside: !ref <residual_inside>\n",
        "",
    )
    (problem,) = folder_problems(tedlium)
    assert "`student` differs among the files VARYING does not name" in problem, problem
    assert "bimamba2_waypoint.yaml: " in problem, problem


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("lr", "`lr` is the same in every file"),  # identical in the six TED-LIUM files
        ("alpha_kd: bimamba2_hybrid.yaml", "`alpha_kd`: bimamba2_hybrid.yaml holds the same value"),
        ("teacher_lr", "`teacher_lr` is not in two hparams files"),
        ("alpha_kd: bimamba2_unguided.yaml", "`alpha_kd`: bimamba2_unguided.yaml does not set it"),
    ],
)
def test_a_declared_varying_key_must_vary(tmp_path, line, expected):
    tedlium = copy_recipes(tmp_path) / "recipes" / "TEDLIUM"
    with (tedlium / "hparams" / VARYING_FILE).open("a", encoding="utf-8") as varying:
        varying.write(line + "\n")
    problems = folder_problems(tedlium)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    ("folder", "renames", "expected"),
    [
        (  # a sampler argument fed from a differently named key
            "recipes/SLURP",
            (("\nmax_batch_items:", "\nbatch_size:"), ("<max_batch_items>", "<batch_size>")),
            "`train_sampler.!name:cald_brain.data.DurationBatchSampler.max_batch_items` is fed by",
        ),
        (  # a loader option
            "lm/Pile",
            (("\nnum_workers:", "\nworkers:"), ("<num_workers>", "<workers>")),
            "`train_dataloader_opts.num_workers` is fed by",
        ),
        ("nlp/GLUE", (("\nprecision:", "\ndtype:"),), "no `precision`"),  # a key the engine reads by name
        (  # a name retired in favour of the shared one
            "recipes/TEDLIUM",
            (
                ("\nmax_batch_samples:", "\nbatch_max_samples:"),
                ("<max_batch_samples>", "<batch_max_samples>"),
            ),
            "`batch_max_samples` is called `max_batch_samples`",
        ),
    ],
)
def test_a_concept_renamed_in_one_family_is_reported(tmp_path, folder, renames, expected):
    copy_recipes(tmp_path)
    for path in sorted((tmp_path / folder / "hparams").glob("*.yaml")):
        for old, new in renames:
            edit(path, old, new)
    problems = naming_problems(recipe_dirs(tmp_path))
    assert any(expected in problem and folder in problem for problem in problems), problems
