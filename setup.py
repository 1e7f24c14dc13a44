"""Packages: everything under src/, plus the top-level conf/ shipped as ``clipdehaze.conf`` so Hydra configs work
from an installed wheel (``pkg://clipdehaze.conf``). pyproject.toml's find cannot express that mapping.

Namespace discovery lists the data-only folders (``conf/data``, ``models/clip/configs``, ...) as packages, so
setuptools ships their files without warning that an importable folder is missing from ``packages``."""

from setuptools import find_namespace_packages, setup

setup(
    packages=find_namespace_packages("src", include=["clipdehaze*"])
    + ["clipdehaze.conf"] + [f"clipdehaze.conf.{p}" for p in find_namespace_packages("conf")],
    package_dir={"": "src", "clipdehaze.conf": "conf"},
)
