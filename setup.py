"""Install cald_brain: Cross-Architecture Layerwise Distillation recipes on top of SpeechBrain."""

import runpy
from pathlib import Path

from setuptools import find_packages, setup

# The supported versions live in one place, read here without importing cald_brain (not installed yet).
requirement_strings = runpy.run_path(str(Path(__file__).parent / "cald_brain" / "requirements.py"))[
    "requirement_strings"
]

setup(
    name="cald_brain",
    version="0.1.0",
    description=(
        "Turn pretrained transformers (Wav2Vec2, RoBERTa, Pythia) into linear-complexity models "
        "and fine-tune them with cross-architecture layerwise distillation (CALD)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["cald_brain", "cald_brain.*"]),
    install_requires=requirement_strings(),
    extras_require={
        # CUDA kernels; never needed on CPU. See README "GPU kernels" (pip install --no-build-isolation).
        "cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        "dev": ["pytest", "ruff", "matplotlib"],
        # lm/Pile/evaluate.py: EleutherAI's lm-evaluation-harness (tested with 0.4.13)
        "lm": ["lm-eval[hf]>=0.4.13,<0.5"],
        # --logger=tensorboard / --logger=wandb (cald_brain/tracking.py)
        "track": ["tensorboard>=2.14"],
        "wandb": ["wandb"],
    },
)
