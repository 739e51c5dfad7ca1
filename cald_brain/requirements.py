"""The versions of the packages cald_brain needs, read by setup.py (install_requires) and checked when
`cald_brain` is imported, so that an environment with an older package stops with one line naming it and
the version to install rather than with an ImportError deep inside a module. Standard library only."""

from importlib import metadata

# package -> (lowest version or None, first version not supported or None). transformers 5 is where the
# config classes and weight-loading modules the conversion uses first exist; CI runs the pins of
# requirements-dev.txt.
REQUIRED: dict[str, tuple[str | None, str | None]] = {
    "torch": ("2.6", None),
    "torchaudio": ("2.6", None),
    "speechbrain": ("1.1", "1.2"),
    "transformers": ("5.0", "6"),
    "hyperpyyaml": ("1.2", None),
    "sentencepiece": (None, None),
    "jiwer": (None, None),
    "soundfile": (None, None),
    "safetensors": (None, None),
    "tqdm": (None, None),
}


def release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version string ("2.11.0+cu130" -> (2, 11, 0); "1.1rc1" -> (1, 1))."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if len(digits) < len(part):
            break
    return tuple(numbers)


def specifier(name: str, low: str | None, high: str | None) -> str:
    """pip's requirement string: "name", "name>=low" or "name>=low,<high"."""
    bounds = ([f">={low}"] if low else []) + ([f"<{high}"] if high else [])
    return name + ",".join(bounds)


def requirement_strings() -> list[str]:
    """setup.py's install_requires."""
    return [specifier(name, low, high) for name, (low, high) in REQUIRED.items()]


def check_installed(required: dict[str, tuple[str | None, str | None]] = REQUIRED) -> None:
    """Raise ImportError (one line: the package, the version found, what to install) for a missing package or
    one outside its supported range."""
    for name, (low, high) in required.items():
        wanted = specifier(name, low, high)
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise ImportError(
                f"cald_brain needs {name}, which is not installed: pip install '{wanted}'"
            ) from None
        if (low is not None and release(found) < release(low)) or (
            high is not None and release(found) >= release(high)
        ):
            raise ImportError(f"cald_brain needs {wanted}, found {name} {found}: pip install '{wanted}'")
