"""Physics simulation core, batch-first torch. Knows nothing of nn/, train/ or napari.

Every public name of the modules in this package (their ``__all__``) is re-exported here, so
``from napari_deeptrack.sim import Pipeline, Particles, Uniform`` works for every simulation object.
"""

from __future__ import annotations

import importlib
import pkgutil

from .params import Choice, Constant, Derived, Distribution, IntUniform, LogUniform, Normal, Uniform, sample
from .pipeline import Optics, Particles, Pipeline, Scatterer, SimBatch, Target, Transform
from .scene import Scene
from .serialize import from_dict, from_json, register, to_dict, to_json, to_python

__all__ = [
    "Choice", "Constant", "Derived", "Distribution", "IntUniform", "LogUniform", "Normal", "Uniform",
    "sample", "Optics", "Particles", "Pipeline", "Scatterer", "SimBatch", "Target", "Transform", "Scene",
    "from_dict", "from_json", "register", "to_dict", "to_json", "to_python",
]


def _import_all() -> None:
    """Import every submodule (so all serialisable classes are registered) and re-export it."""
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        mod = importlib.import_module(info.name)
        for name in getattr(mod, "__all__", []):
            if name not in globals():
                globals()[name] = getattr(mod, name)
                __all__.append(name)


_import_all()
