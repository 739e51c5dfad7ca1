"""Start-up shared by every recipe's train.py: command line, hparams file, DDP group, experiment folder.

`python recipes/TEDLIUM/train.py hparams/x.yaml` works from the repository root as well as from inside the
recipe folder: a hparams path not found from the current directory is looked up in the recipe folder.
"""

import os
import sys
from typing import Any

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml


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
    available = sorted(os.listdir(os.path.join(recipe_dir, "hparams")))
    raise RecipeError(
        f"hparams file '{path}' not found (looked in '{os.getcwd()}' and '{recipe_dir}'). "
        f"Available in {os.path.join(recipe_dir, 'hparams')}: {', '.join(available)}"
    )


def load_hparams(hparams_file: str, overrides: str | dict | None = None) -> dict[str, Any]:
    """Load a HyperPyYAML file; bad keys, missing placeholders and bad arguments name the file and the fix."""
    with open(hparams_file, encoding="utf-8") as fin:
        try:
            return load_hyperpyyaml(fin, overrides)
        except KeyError as err:  # unknown --key=value override
            raise RecipeError(
                f"{hparams_file}: {err.args[0]}. "
                "Command-line overrides must name a top-level key of this file."
            ) from err
        except (ValueError, TypeError) as err:
            hint = ""
            if "PLACEHOLDER" in str(err):
                hint = " Pass it on the command line, e.g. --data_folder=/path."
            raise RecipeError(f"{hparams_file}: {err}.{hint}") from err


def start_recipe(recipe_dir: str, argv: list[str] | None = None) -> tuple[dict[str, Any], Any, str]:
    """Parse the command line, load the hparams, join the DDP group and create the experiment folder.

    Returns (hparams, run_opts, hparams_file).
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None else argv)
    hparams_file = resolve_hparams_path(hparams_file, recipe_dir)
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams = load_hparams(hparams_file, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return hparams, run_opts, hparams_file
