"""cald_brain: linear-time students from pretrained transformers, trained with CALD."""

from cald_brain.requirements import check_installed

check_installed()

__version__ = "0.1.0"
