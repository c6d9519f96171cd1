"""Contrast polarity: particles that take light away (absorbing objects in transmitted light).

:class:`InvertContrast` turns the photons emitted by incoherently imaged particles into photons
*removed* from the illumination: placed before :class:`~napari_deeptrack.sim.Background`, the image
becomes ``background - particles``, i.e. absorbing (dark) particles on a bright field blurred by the
same incoherent PSF. It is the incoherent limit of bright-field absorption; for the coherent
(Mie / ring) image of a sphere use :class:`~napari_deeptrack.sim.Brightfield`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pipeline import SimBatch, Transform
from .serialize import register

__all__ = ["InvertContrast"]


@register
@dataclass
class InvertContrast(Transform):
    """Negate the particle image so that a following ``Background`` makes dark particles.

    Put it between the optics and ``Background`` (``transforms=[InvertContrast(), Background(100),
    Poisson()]``); a particle's ``intensity`` is then the number of photons it removes from the
    illumination. Expected photons below zero (a particle darker than black) are clipped by
    ``Poisson``.
    """

    kind = "signal"

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        batch.image = -batch.image
        return batch
