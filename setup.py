"""Packaging for orch: `pip install .` gives the `orch` command."""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(
    r'__version__ = "([^"]+)"', (Path(__file__).parent / "orch" / "__init__.py").read_text()
).group(1)

setup(
    name="orch",
    version=VERSION,
    description="A small Nomad-like cluster orchestrator",
    packages=find_packages(include=["orch", "orch.*"]),
    # The web UI's templates and static files are read from the package.
    package_data={"orch.server.ui": ["templates/*.tpl", "static/*"]},
    python_requires=">=3.11",
    install_requires=[
        "bottle",
        "waitress",
        "requests",
        "psutil",
        "docker",
        "google-re2",
        "orjson",
        "croniter",
        "psycopg[binary]",
        "psycopg-pool",
        "python-hcl2>=7.3,<8",  # 8 changes its output shape (orch/nomad/hcl.py)
    ],
    entry_points={
        "console_scripts": ["orch=orch.__main__:main"],
        # `orch_cluster` fixture and `dev_cluster()` for the tests of orch's users.
        "pytest11": ["orch = orch.testing"],
    },
)
