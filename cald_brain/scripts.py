"""Importing a repository script (a recipe's prepare.py, a tool) by its file path, under a unique module name,
so two recipes' `prepare` modules never collide in one process and no `sys.path` entry is needed."""

import importlib.util
import os
import sys
from types import ModuleType


def load_script(path: str | os.PathLike, name: str) -> ModuleType:
    """The Python file `path` as module `name` (registered in sys.modules, which dataclasses need); loaded
    once: a second call with the same name and file returns the same module."""
    path = os.path.abspath(os.fspath(path))
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == path:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing (a script of this repository; use a full checkout)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_recipe_module(recipe_dir: str | os.PathLike, stem: str) -> ModuleType:
    """`<recipe_dir>/<stem>.py` as module `<recipe folder name, lower case>_<stem>` (e.g. tedlium_prepare)."""
    folder = os.path.basename(os.path.abspath(os.fspath(recipe_dir))).lower()
    return load_script(os.path.join(recipe_dir, f"{stem}.py"), f"{folder}_{stem}")
