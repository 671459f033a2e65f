"""A script of bin/ or bench/ as a module: those folders are not packages, and tests call a script's
functions (its main(), a benchmark's helpers) in-process."""

from __future__ import annotations

import sys
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, folder: str = "bin") -> ModuleType:
    """<folder>/<name>.py loaded as the module `<folder>_<name>`; sys.path as it was before (a script
    puts the repository first on it when run)."""
    path = list(sys.path)
    try:
        spec = spec_from_file_location(f"{folder}_{name}", REPO / folder / f"{name}.py")
        module = module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module
