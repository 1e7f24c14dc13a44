"""Packages: everything under src/, plus the top-level conf/ shipped as ``clipdehaze.conf`` so Hydra configs work
from an installed wheel (``pkg://clipdehaze.conf``), and experiments/ as ``clipdehaze.experiments`` so
``clipdehaze-table --paper`` finds the published numbers there (``clipdehaze.utils.resources``). pyproject.toml's
find cannot express that mapping; pyproject.toml's package-data says which files of each folder ship.

Namespace discovery lists the data-only folders (``conf/data``, ``models/clip/configs``, ...) as packages, so
setuptools ships their files without warning that an importable folder is missing from ``packages``."""

from setuptools import find_namespace_packages, setup

#: Top-level folders shipped inside the package as ``clipdehaze.<folder>`` (clipdehaze.utils.resources.PROJECT_FOLDERS).
DATA_FOLDERS = ("conf", "experiments")


def data_packages(folder: str) -> list[str]:
    """``clipdehaze.<folder>`` and one package per subfolder of it."""
    return [f"clipdehaze.{folder}"] + [f"clipdehaze.{folder}.{p}" for p in find_namespace_packages(folder)]


setup(
    packages=find_namespace_packages("src", include=["clipdehaze*"])
    + [p for d in DATA_FOLDERS for p in data_packages(d)],
    package_dir={"": "src", **{f"clipdehaze.{d}": d for d in DATA_FOLDERS}},
)
