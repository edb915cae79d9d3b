"""The GPU machines' Python packages, and an import guard that makes this machine lack the rest.

The GPU machines run Python 3.12 with PyTorch and the packages of gpu_machine.txt, and nothing
can be installed there from the network: whatever else the GPU check imports travels as the
wheels of gpu_wheels.txt. The check's dry run on CPU (`benchmarks.gpu_check --simulate`, run
by `make test`) installs `Guard` in every process it starts, so an import of a package that is
in neither list fails here as it would there, naming the list to add it to. (Versions are not
simulated: the GPU machines' own torch, NumPy and pandas are the ones that run there.)
"""

from __future__ import annotations

import importlib.abc
import re
import sys
from pathlib import Path

WHEELS = Path(__file__).with_name("gpu_wheels.txt")
INSTALLED = Path(__file__).with_name("gpu_machine.txt")


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> list[str]:
    """The lines of a package list, without comments and blank lines."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def installed_names() -> list[str]:
    return [normal(name) for name in listed(INSTALLED)]


def wheel_names() -> list[str]:
    """The distributions gpu_wheels.txt pins (NAME==VERSION lines)."""
    return [normal(line.split("==")[0]) for line in listed(WHEELS)]


class Guard(importlib.abc.MetaPathFinder):
    """Refuses a top-level import whose distribution a GPU machine would not have."""

    def __init__(self):
        from importlib.metadata import packages_distributions, requires

        # the GPU machine's torch comes with its own dependencies (as this one's does)
        torch_needs = {normal(re.split(r"[ ;<>=!~\[]", r)[0]) for r in requires("torch") or ()}
        self.allowed = set(installed_names()) | set(wheel_names()) | torch_needs
        self.allowed.add("dl-pipeline")  # this project: the source tree travels
        self.owners = packages_distributions()

    def find_spec(self, name, path=None, target=None):
        if path is not None:  # a submodule: its package was let through
            return None
        owners = {normal(d) for d in self.owners.get(name, ())}
        if owners and not owners & self.allowed:
            raise ModuleNotFoundError(
                f"No module named {name!r}: a GPU machine lacks {', '.join(sorted(owners))}; "
                f"add it to {WHEELS.name}",
                name=name,
            )
        return None


def install() -> None:
    """Guard this process's imports from now on."""
    if not any(isinstance(f, Guard) for f in sys.meta_path):
        sys.meta_path.insert(0, Guard())


def site_folder(folder: Path) -> Path:
    """A folder whose sitecustomize.py installs the guard in every Python process started
    with it first on PYTHONPATH."""
    (folder / "sitecustomize.py").write_text(
        "from benchmarks import gpu_machine\n\ngpu_machine.install()\n"
    )
    return folder
