"""Tests of the deployment files: compose, Kubernetes, collector configuration, docs, the demo."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.support.components import ROOT


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (scripts/ is not a package; `make` runs these files)."""
    module_name = f"scripts_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
