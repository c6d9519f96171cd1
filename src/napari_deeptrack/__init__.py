"""napari-deeptrack: deep learning for quantitative microscopy, trained on physically simulated images.

The headless core (``sim``, ``nn``, ``train``, ``analysis``, ``io``, ``tasks``) never imports napari
or Qt; the napari plugin lives in ``_napari``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-deeptrack")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
