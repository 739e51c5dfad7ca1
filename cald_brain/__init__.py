"""cald_brain: linear-time students from pretrained transformers, trained with CALD."""

__version__ = "0.1.0"
