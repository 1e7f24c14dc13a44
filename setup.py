"""Packages: everything under src/, plus the top-level conf/ shipped as ``clipdehaze.conf`` so Hydra configs work
from an installed wheel (``pkg://clipdehaze.conf``). pyproject.toml's find cannot express that mapping."""

from setuptools import find_packages, setup

setup(
    packages=find_packages("src") + ["clipdehaze.conf"],
    package_dir={"": "src", "clipdehaze.conf": "conf"},
)
