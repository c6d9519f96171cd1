"""Live threshold filtering of cached detections (no napari imports; used by the Apply widget).

The network runs once and every detection is kept with its probability. Moving the threshold only
computes a boolean mask over the cached probabilities (a vectorised comparison: microseconds for
10,000 points) that the widget writes to the Points layer's ``shown`` property, plus per-frame counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["DetectionCache"]


class DetectionCache:
    """All detections of one Apply run, with their probability and frame.

    Parameters
    ----------
    table : DataFrame
        One row per detection; ``probability`` (NaN counts as 1) and optionally ``frame``.
    n_frames : int
        Number of frames of the source image (for counts of empty frames).
    """

    def __init__(self, table: pd.DataFrame, n_frames: int):
        self.table = table.reset_index(drop=True)
        n = len(self.table)
        prob = self.table["probability"].to_numpy(dtype=float) if "probability" in self.table else np.ones(n)
        self.probability = np.where(np.isnan(prob), 1.0, prob)
        frame = self.table["frame"].to_numpy() if "frame" in self.table else np.zeros(n)
        self.frame = np.asarray(frame, dtype=np.int64)
        self.n_frames = max(int(n_frames), int(self.frame.max()) + 1 if n else 0, 1)

    def __len__(self) -> int:
        return len(self.table)

    def mask(self, threshold: float) -> np.ndarray:
        """Which detections have ``probability >= threshold``."""
        return self.probability >= float(threshold)

    def counts(self, threshold: float) -> np.ndarray:
        """Detections per frame at ``threshold`` (length ``n_frames``)."""
        return np.bincount(self.frame[self.mask(threshold)], minlength=self.n_frames)

    def counts_table(self, threshold: float) -> pd.DataFrame:
        c = self.counts(threshold)
        return pd.DataFrame({"frame": np.arange(len(c)), "count": c})

    def shown_table(self, threshold: float) -> pd.DataFrame:
        return self.table[self.mask(threshold)].reset_index(drop=True)
