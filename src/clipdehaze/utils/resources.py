"""Where the project's data folders are: the source checkout's ``conf/`` and ``experiments/`` when clipdehaze is
imported from one (``<checkout>/src/clipdehaze``, an editable install included), else the copies the wheel ships
inside the package, ``clipdehaze/conf`` and ``clipdehaze/experiments`` (mapped in setup.py, listed in
pyproject.toml's package-data).

The checkout wins where there is one, so an edit to ``conf/`` takes effect without reinstalling, and a checkout on
``PYTHONPATH`` never reads the configs of another clipdehaze installed in the same environment.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

#: The checkout's top-level data folders, each shipped in the wheel as the package ``clipdehaze.<name>``.
PROJECT_FOLDERS = ("conf", "experiments")


def package_dir() -> Path:
    """The folder of the imported ``clipdehaze`` package."""
    return Path(str(importlib.resources.files("clipdehaze")))


def checkout_root() -> Path | None:
    """The source checkout the package is imported from: the package sits at ``<root>/src/clipdehaze`` beside
    the project's ``pyproject.toml`` and ``conf/train.yaml``. None for an installed package."""
    package = package_dir()
    if package.parent.name != "src":
        return None
    root = package.parent.parent
    if (root / "pyproject.toml").is_file() and (root / "conf" / "train.yaml").is_file():
        return root
    return None


def project_dir(name: str) -> Path:
    """The folder ``name`` (one of :data:`PROJECT_FOLDERS`): the checkout's, else the one shipped in the package."""
    if name not in PROJECT_FOLDERS:
        raise ValueError(f"unknown project folder {name!r}; known: {', '.join(PROJECT_FOLDERS)}")
    root = checkout_root()
    return root / name if root is not None else package_dir() / name
