"""Start-up shared by every recipe's train.py: command line, hparams file, DDP group, experiment folder.

`python recipes/TEDLIUM/train.py hparams/x.yaml` works from the repository root as well as from inside the
recipe folder: a hparams path not found from the current directory is looked up in the recipe folder.
Before anything heavy is built, run options and `--key=value` overrides are checked against their types, and
the output folder is locked so that a second run on it is refused (see `cald_brain.run_control`).
"""

import collections
import contextlib
import dataclasses
import os
import shlex
import sys
import typing
from collections.abc import Callable, Iterator
from typing import Any

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml, resolve_references
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.comments import TaggedScalar

from cald_brain.distill.guidance import GuidanceConfig
from cald_brain.distill.losses import DistillLossConfig
from cald_brain.run_control import (
    RUN_IDENTITY_KEYS,
    TYPE_NAMES,
    FolderInUseError,
    RunIdentityError,
    RunLock,
    StopRequest,
    check_run_identity,
    check_run_options,
    check_teacher_identity,
    scalar_type,
)
from cald_brain.tracking import LoggerChoiceError, check_logger_choice


class RecipeError(SystemExit):
    """A user-facing start-up error: printed without a traceback, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(f"ERROR: {message}")


def resolve_hparams_path(path: str, recipe_dir: str) -> str:
    """`path` as given if it exists, else relative to the recipe folder; a clear error if neither."""
    if os.path.isfile(path):
        return path
    candidate = os.path.join(recipe_dir, path)
    if os.path.isfile(candidate):
        return candidate
    available = sorted(
        name for name in os.listdir(os.path.join(recipe_dir, "hparams")) if name.endswith(".yaml")
    )
    raise RecipeError(
        f"hparams file '{path}' not found (looked in '{os.getcwd()}' and '{recipe_dir}'). "
        f"Available in {os.path.join(recipe_dir, 'hparams')}: {', '.join(available)}"
    )


@contextlib.contextmanager
def _yaml_errors(hparams_file: str) -> Iterator[None]:
    """Turn HyperPyYAML's errors into RecipeErrors naming the file and the fix."""
    try:
        yield
    except KeyError as err:  # unknown --key=value override
        raise RecipeError(
            f"{hparams_file}: {err.args[0]}. Command-line overrides must name a top-level key of this file."
        ) from err
    except (ValueError, TypeError) as err:
        hint = ""
        if "PLACEHOLDER" in str(err):
            hint = " Pass it on the command line, e.g. --data_folder=/path."
        raise RecipeError(f"{hparams_file}: {err}.{hint}") from err


def load_hparams(hparams_file: str, overrides: str | dict | None = None) -> dict[str, Any]:
    """Load a HyperPyYAML file; bad keys, missing placeholders and bad arguments name the file and the fix."""
    with open(hparams_file, encoding="utf-8") as fin, _yaml_errors(hparams_file):
        return load_hyperpyyaml(fin, overrides)


def resolved_top_level(hparams_file: str, overrides: str | dict | None = None) -> dict[str, Any]:
    """The top-level entries of the hparams with the overrides and `!ref`s applied, without building any
    object (cheap: the folder is locked and checked before the models are loaded). Tagged entries (`!new:`
    ...) stay unbuilt."""
    with open(hparams_file, encoding="utf-8") as fin, _yaml_errors(hparams_file):
        resolved = resolve_references(fin, overrides)
    return dict(YAML(typ="rt").load(resolved) or {})


def output_folder_of(hparams_file: str, overrides: str | dict | None = None) -> str:
    """`output_folder` of the hparams with the overrides (see `resolved_top_level`)."""
    folder = resolved_top_level(hparams_file, overrides).get("output_folder")
    if not isinstance(folder, str):
        raise RecipeError(f"{hparams_file}: output_folder must be set to a folder, got {folder!r}")
    return folder


def run_identity(hparams_file: str, overrides: str | dict | None = None) -> dict[str, Any]:
    """The values of RUN_IDENTITY_KEYS for this run: the hparams file's name and each key the hparams set to
    a plain value (see `cald_brain.run_control.check_run_identity`)."""
    top = resolved_top_level(hparams_file, overrides)
    identity = {"hparams_file": os.path.basename(hparams_file)}
    for key in RUN_IDENTITY_KEYS:
        value = top.get(key)
        if isinstance(value, (str, int, float, bool)):
            identity[key] = value
    return identity


def typed_run_options(run_opts: Any) -> Any:
    """`run_opts` (SpeechBrain's RunOptions) with every option converted to its declared type; a bad value is
    a RecipeError naming the option and the expected type."""
    try:
        typed = check_run_options(dict(run_opts.items()))
    except TypeError as err:
        raise RecipeError(f"--{err}") from err
    return dataclasses.replace(run_opts, **typed)


def _declared_types() -> dict[str, type]:
    """Scalar types of the CALD keys whose YAML default may be null (from the engine's config dataclasses)."""
    found = {}
    for cls in (GuidanceConfig, DistillLossConfig):
        for name, annotation in typing.get_type_hints(cls).items():
            if isinstance(kind := scalar_type(annotation), type):
                found[name] = kind
    return found


def _default_types(hparams_file: str) -> dict[str, type]:
    """The type of each top-level key's default in the hparams file: its plain value, or what a bare
    `!ref <key>` points at; keys built by tags (`!new:` ...) have none."""
    with open(hparams_file, encoding="utf-8") as fin:
        raw = YAML(typ="rt").load(fin) or {}
    types = _declared_types()

    def type_of(key: str, seen: frozenset = frozenset()) -> type | None:
        value = raw.get(key)
        if isinstance(value, TaggedScalar) and value.tag.value == "!ref" and key not in seen:
            target = value.value.strip()
            if target.startswith("<") and target.endswith(">") and target.count("<") == 1:
                return type_of(target[1:-1], seen | {key})
            return None
        for kind in (bool, int, float, str):  # bool first: it is an int too
            if isinstance(value, kind):
                return kind
        return types.get(key)

    return {key: kind for key in raw if (kind := type_of(str(key))) is not None}


def parse_overrides(overrides: str | dict | None) -> dict[str, Any]:
    """The `--key=value` overrides as a dict; a key given twice or unparsable YAML is a RecipeError naming
    it."""
    if not overrides:
        return {}
    if not isinstance(overrides, str):
        return dict(overrides)
    keys = [line.split(":", 1)[0] for line in overrides.splitlines() if line and not line[0].isspace()]
    repeated = [key for key, count in collections.Counter(keys).items() if count > 1]
    if repeated:
        raise RecipeError(
            f"{', '.join(f'--{key}' for key in repeated)} given more than once on the command line; give "
            "each override once"
        )
    try:
        return YAML(typ="safe", pure=True).load(overrides) or {}
    except YAMLError as err:
        raise RecipeError(f"the command-line overrides are not valid YAML values ({err})") from err


def check_override_types(hparams_file: str, overrides: str | dict | None) -> None:
    """Each `--key=value` override must have the type of the key's default in the hparams file (an integer
    where 0.5 or "abc" would only fail deep inside the run); a mismatch is a RecipeError naming key and
    type."""
    values = parse_overrides(overrides)
    expected = _default_types(hparams_file)
    for key, value in values.items():
        kind = expected.get(key)
        if kind is None or value is None or kind is str:
            continue
        fits = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            fits = True
        if not fits:
            raise RecipeError(
                f"--{key}={value}: {key} must be {TYPE_NAMES[kind]} (its default in {hparams_file} is), "
                f"got {value!r}"
            )


def check_logger(hparams_file: str, overrides: str | dict | None) -> None:
    """The `logger` key (`--logger=`) names a known logger whose package is installed; else a RecipeError,
    before anything is built."""
    try:
        check_logger_choice(resolved_top_level(hparams_file, overrides).get("logger", "file"))
    except LoggerChoiceError as err:
        raise RecipeError(f"{hparams_file}: {err}") from err


def student_commands(argv: list[str], teacher_save: str) -> list[str]:
    """After a teacher run started as `argv` (sys.argv: script, hparams file, arguments): the commands of
    the recipe's student runs that read a teacher (their hparams have `teacher_path`), with the same
    arguments but `--teacher_path=<teacher_save>` (and without the teacher's own `--output_folder`)."""
    script, hparams_file, *args = argv
    resolved = resolve_hparams_path(hparams_file, os.path.dirname(script))
    hparams_dir = os.path.dirname(resolved)
    dropped = ("--teacher_path", "--output_folder")
    kept = []
    for before, arg in zip([None, *args], args, strict=False):
        if not arg.startswith(dropped) and before not in dropped:  # --key=value, or --key value
            kept.append(arg)
    commands = []
    for name in sorted(os.listdir(hparams_dir)):
        path = os.path.join(hparams_dir, name)
        if not name.endswith(".yaml") or os.path.samefile(path, resolved):
            continue
        with open(path, encoding="utf-8") as fin:
            if "teacher_path" not in (YAML(typ="rt").load(fin) or {}):
                continue
        student = os.path.join(os.path.dirname(hparams_file), name)
        words = ["python", script, student, *kept, f"--teacher_path={teacher_save}"]
        commands.append(shlex.join(words))
    return commands


def next_steps_text(argv: list[str], teacher_save: str) -> str:
    """What to run after a teacher run: its student commands and the SLURM helper that chains them."""
    commands = student_commands(argv, teacher_save)
    if not commands:
        return f"Teacher run finished; its checkpoints are in {teacher_save}."
    recipe = os.path.dirname(os.path.abspath(argv[0]))
    return "\n".join(
        [
            f"Teacher run finished. The students that distil from it (--teacher_path={teacher_save}):",
            *(f"  {command}" for command in commands),
            "(the recipe's other students need no teacher run; on SLURM, "
            f"python tools/slurm/submit.py {os.path.relpath(recipe)} -- <the same overrides> submits the "
            "teacher and then the students that need it)",
        ]
    )


def cpu_distributed_backend(run_opts: Any) -> Any:
    """Under torchrun on the CPU (`--device=cpu`, RANK set) the process group must use gloo: NCCL needs GPUs
    and SpeechBrain would stop with "Not enough GPUs available!". gloo is taken unless a backend was given;
    `--distributed_backend=nccl` given with `--device=cpu` is a RecipeError naming the flag to change."""
    if "RANK" not in os.environ or not str(run_opts.device).startswith("cpu"):
        return run_opts
    if run_opts.distributed_backend != "nccl":
        return run_opts
    if "distributed_backend" in (run_opts.overridden_args or ()):
        raise RecipeError(
            "--distributed_backend=nccl needs GPUs, but this run has --device=cpu: use "
            "--distributed_backend=gloo (or leave it out: CPU runs under torchrun use gloo)"
        )
    return dataclasses.replace(run_opts, distributed_backend="gloo")


def lock_output_folder(folder: str) -> RunLock | None:
    """Take the run lock of `folder` (rank 0 only under torchrun); a live run holding it is a RecipeError."""
    if not sb.utils.distributed.if_main_process():
        return None
    lock = RunLock(folder)
    try:
        lock.acquire()
    except FolderInUseError as err:
        raise RecipeError(str(err)) from err
    return lock


def with_derived(
    hparams_file: str, overrides: str | dict | None, derive: Callable[[dict], dict]
) -> str | dict | None:
    """The command-line overrides plus the values `derive` computes from them (e.g. GLUE's num_labels from
    --task), for the keys the hparams file has, so the YAML's references see them when it loads. Passing a
    derived key on the command line with another value is a RecipeError."""
    given = (YAML(typ="safe", pure=True).load(overrides) if isinstance(overrides, str) else overrides) or {}
    with open(hparams_file, encoding="utf-8") as fin:
        keys = set(YAML(typ="rt").load(fin) or {})
    derived = {key: value for key, value in derive(given).items() if key in keys}
    for key, value in derived.items():
        if key in given and given[key] != value:
            raise RecipeError(
                f"--{key}={given[key]}: this recipe derives {key} from the command line ({key}={value} "
                f"here, for {hparams_file}); leave --{key} out"
            )
    return {**given, **derived} if derived else overrides


def check_output_folder(folder: str, hparams_file: str, overrides: str | dict | None) -> None:
    """The output folder must hold this run's kind of results (`check_run_identity`), and the teacher run
    must have been trained for this task (`check_teacher_identity`); rank 0 only."""
    if not sb.utils.distributed.if_main_process():
        return
    identity = run_identity(hparams_file, overrides)
    try:
        if "teacher_path" in identity:
            check_teacher_identity(identity["teacher_path"], identity)
        check_run_identity(folder, identity)
    except RunIdentityError as err:
        raise RecipeError(str(err)) from err


def start_recipe(
    recipe_dir: str,
    argv: list[str] | None = None,
    derive: Callable[[dict], dict] | None = None,
    prepare: Callable[[dict], None] | None = None,
) -> tuple[dict[str, Any], Any, str]:
    """Parse and type-check the command line, join the DDP group, load the hparams, lock the output folder
    (one run at a time), check that it holds this kind of run (task, guidance mode, model, data), handle
    SIGUSR1 and SIGTERM (checkpoint and stop) and create the experiment folder. `derive`
    maps the command line's `--key=value` overrides to more overrides the recipe computes from them (see
    `with_derived`). `prepare` (the data preparation) runs on the main process with the hparams' plain
    top-level values (`resolved_top_level`) before the hparams load, so that bad data stops the run before
    any model is built.

    Returns (hparams, run_opts, hparams_file).
    """
    StopRequest.install()
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None else argv)
    hparams_file = resolve_hparams_path(hparams_file, recipe_dir)
    if derive is not None:
        overrides = with_derived(hparams_file, overrides, derive)
    run_opts = cpu_distributed_backend(typed_run_options(run_opts))
    check_override_types(hparams_file, overrides)
    check_logger(hparams_file, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    folder = output_folder_of(hparams_file, overrides)
    lock_output_folder(folder)
    check_output_folder(folder, hparams_file, overrides)
    if prepare is not None:
        sb.utils.distributed.run_on_main(prepare, args=[resolved_top_level(hparams_file, overrides)])
    hparams = load_hparams(hparams_file, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return hparams, run_opts, hparams_file
