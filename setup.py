"""Packaging glue that pyproject.toml cannot express: ship the repo's top-level `weights/` inside the package.

The shipped weights live in `weights/` at the top of the repository (beside `diffmf_cli/`, as the design keeps
them), and install as the data folder `diffmf_cli/shipped_weights/`, so `pip install .`, a wheel and an sdist
carry them; an editable install finds them in the repository instead (`diffmf_cli.weights` looks in both).
Everything else about the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["diffmf_cli", "diffmf_cli.*"]) + ["diffmf_cli.shipped_weights"],
    package_dir={"diffmf_cli.shipped_weights": "weights"},
)
