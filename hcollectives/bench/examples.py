"""Locating and loading the example jobs (examples/ in the source tree).

mrjob runs a job's tasks by executing the file its class was defined in, so
the demo and the benchmark load the example scripts from their files rather
than keeping copies of them inside the package.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from ..errors import ConfigurationError


def examples_dir() -> Path:
    configured = os.environ.get("HCOLLECTIVES_EXAMPLES")
    path = Path(configured) if configured else Path(__file__).resolve().parents[2] / "examples"
    if not (path / "kmeans.py").exists():
        raise ConfigurationError(f"example jobs not found in {path}: run from a source checkout "
                                 "or set $HCOLLECTIVES_EXAMPLES to its examples/ directory")
    return path


def load_example(name: str) -> ModuleType:
    path = examples_dir() / f"{name}.py"
    module_name = f"hcollectives_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # mrjob finds the script its tasks run through the class's module in sys.modules.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
