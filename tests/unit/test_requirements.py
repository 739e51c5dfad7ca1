"""The supported-version table: setup.py's install_requires, and the one-line stop on an old package."""

import runpy
from importlib import metadata

import pytest
from conftest import ROOT

from cald_brain import requirements


def test_setup_reads_the_table():
    setup_globals = runpy.run_path(str(ROOT / "cald_brain" / "requirements.py"))
    strings = setup_globals["requirement_strings"]()
    assert "transformers>=5.0,<6" in strings and "speechbrain>=1.1,<1.2" in strings and "jiwer" in strings


def test_installed_stack_passes():
    requirements.check_installed()


@pytest.mark.parametrize(
    ("found", "ok"),
    [("4.57.1", False), ("5.0.0", True), ("5.23.0", True), ("6.0.0.dev0", False), ("5.1.0rc1", True)],
)
def test_transformers_range(monkeypatch, found, ok):
    monkeypatch.setattr(requirements.metadata, "version", lambda name: found)
    table = {"transformers": ("5.0", "6")}
    if ok:
        requirements.check_installed(table)
    else:
        with pytest.raises(
            ImportError, match=rf"needs transformers>=5.0,<6, found transformers {found}: pip"
        ):
            requirements.check_installed(table)


def test_missing_package_is_named(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(requirements.metadata, "version", missing)
    with pytest.raises(
        ImportError, match="needs speechbrain, which is not installed: pip install 'speechbrain>=1.1,<1.2'"
    ):
        requirements.check_installed({"speechbrain": ("1.1", "1.2")})


def test_release_parts():
    assert requirements.release("2.11.0+cu130") == (2, 11, 0)
    assert requirements.release("1.1rc1") == (1, 1)
    assert requirements.release("5.0.0.dev0") == (5, 0, 0)
