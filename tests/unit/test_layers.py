"""Layers point one way: the model, conversion and mixer layers load without SpeechBrain's trainer, and the
data helpers without the engine (cald_brain.brain) or the recipe start-up (cald_brain.recipe). Each check runs
in a fresh interpreter, as an import in this process would see what other tests already loaded."""

import subprocess
import sys

ENGINE = ("cald_brain.brain", "cald_brain.recipe", "cald_brain.tasks")


def loaded_after(statement: str, names: tuple[str, ...]) -> list[str]:
    """Which of `names` are in sys.modules after `statement`, in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint(','.join(n for n in {names!r} if n in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [name for name in out.stdout.strip().split(",") if name]


def test_models_convert_and_mixers_do_not_load_the_trainer():
    statement = (
        "import cald_brain.models, cald_brain.models.generation, cald_brain.convert, cald_brain.mixers"
    )
    assert loaded_after(statement, ("speechbrain.core", *ENGINE)) == []


def test_data_helpers_do_not_load_the_engine():
    modules = ("audio", "crops", "manifests", "mmap_tokens", "sampling", "text")
    statement = "\n".join(f"import cald_brain.data.{module}" for module in modules)
    assert loaded_after(statement, ("cald_brain.models", *ENGINE)) == []
