"""A light loss-curve plot drawn with QPainter (no matplotlib on the GUI thread while training)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot", "MSDPlot"]


class LossPlot(QWidget):
    """Training loss per batch (thin), mean training loss and validation loss per epoch (thick).

    The y axis is logarithmic while every loss is positive, linear otherwise (a likelihood loss such
    as ``gaussian_nll`` goes negative as the network becomes confident).
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.clear()

    def clear(self) -> None:
        self.batch_steps: list[float] = []
        self.batch_loss: list[float] = []
        self.epoch_steps: list[float] = []
        self.epoch_train: list[float] = []
        self.epoch_val: list[float] = []
        self.log_y = True
        self.update()

    @property
    def n_points(self) -> int:
        return len(self.batch_loss) + len(self.epoch_val)

    def add_event(self, ev: dict) -> None:
        """Take a trainer event (``batch`` or ``epoch``) and repaint."""
        if ev.get("type") == "batch" and _finite(ev.get("loss")):
            self.batch_steps.append(float(ev["step"]))
            self.batch_loss.append(float(ev["loss"]))
        elif ev.get("type") == "epoch":
            self.epoch_steps.append(float(ev["step"]))
            self.epoch_train.append(float(ev.get("loss", math.nan)))
            self.epoch_val.append(float(ev.get("val_loss", math.nan)))
        self.update()

    def paintEvent(self, event):  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(38, 41, 48))
        left, right, top, bottom = 44, 8, 8, 20
        area = QRectF(left, top, max(w - left - right, 10), max(h - top - bottom, 10))
        p.setPen(QPen(QColor(120, 120, 120)))
        p.drawRect(area)
        values = [v for v in self.batch_loss + self.epoch_train + self.epoch_val if _finite(v)]
        steps = self.batch_steps + self.epoch_steps
        if not values or not steps:
            p.setPen(QColor(180, 180, 180))
            p.drawText(area, Qt.AlignmentFlag.AlignCenter, "loss curves appear here while training")
            p.end()
            return
        self.log_y = min(values) > 0
        scale = math.log10 if self.log_y else float
        lo, hi = scale(min(values)), scale(max(values))
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        x_max = max(max(steps), 1.0)

        def pt(s, v):
            y = (scale(v) - lo) / (hi - lo)
            return QPointF(area.left() + area.width() * s / x_max, area.bottom() - area.height() * y)

        self._line(p, self.batch_steps, self.batch_loss, pt, QColor(90, 140, 200), 1.0)
        self._line(p, self.epoch_steps, self.epoch_train, pt, QColor(80, 170, 255), 2.5)
        self._line(p, self.epoch_steps, self.epoch_val, pt, QColor(255, 150, 60), 2.5)
        p.setPen(QColor(200, 200, 200))
        top_label, bottom_label = (10**hi, 10**lo) if self.log_y else (hi, lo)
        p.drawText(QPointF(2, area.top() + 10), f"{top_label:.2g}")
        p.drawText(QPointF(2, area.bottom()), f"{bottom_label:.2g}")
        p.drawText(QPointF(area.left(), h - 4), "train (blue)  validation (orange)   step")
        p.drawText(QPointF(area.right() - 40, h - 4), f"{int(x_max)}")
        p.end()

    @staticmethod
    def _line(p, xs, ys, pt, color, width) -> None:
        pts = [pt(x, y) for x, y in zip(xs, ys) if _finite(y)]
        if not pts:
            return
        p.setPen(QPen(color, width))
        for a, b in zip(pts[:-1], pts[1:]):
            p.drawLine(a, b)
        if len(pts) == 1 or width > 2:
            for q in pts:
                p.drawEllipse(q, 2.5, 2.5)


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class MSDPlot(QWidget):
    """Ensemble mean squared displacement (um^2) against lag time (s), with the fitted line
    ``MSD = 4 D tau + offset`` (2D), drawn with QPainter (no matplotlib on the GUI thread)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.lag_s: list[float] = []
        self.msd: list[float] = []
        self.sem: list[float] = []
        self.fit: tuple[float, float] | None = None  # (D um^2/s, offset um^2)

    def set_data(self, lag_s, msd, sem=None, fit: tuple[float, float] | None = None) -> None:
        self.lag_s = [float(v) for v in lag_s]
        self.msd = [float(v) for v in msd]
        self.sem = [float(v) if _finite(v) else 0.0 for v in (sem if sem is not None else [0.0] * len(msd))]
        self.fit = fit
        self.update()

    def paintEvent(self, event):  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(38, 41, 48))
        left, right, top, bottom = 48, 10, 8, 22
        area = QRectF(left, top, max(w - left - right, 10), max(h - top - bottom, 10))
        p.setPen(QPen(QColor(120, 120, 120)))
        p.drawRect(area)
        if not self.msd:
            p.setPen(QColor(180, 180, 180))
            p.drawText(area, Qt.AlignmentFlag.AlignCenter, "MSD of the tracks appears here")
            p.end()
            return
        x_max = max(self.lag_s) * 1.05
        y_max = max(m + s for m, s in zip(self.msd, self.sem)) * 1.1 or 1.0

        def pt(x, y):
            return QPointF(area.left() + area.width() * x / x_max, area.bottom() - area.height() * y / y_max)

        if self.fit is not None:
            d, off = self.fit
            p.setPen(QPen(QColor(255, 150, 60), 2.0))
            p.drawLine(pt(0.0, max(off, 0.0)), pt(x_max, min(4 * d * x_max + off, y_max)))
        p.setPen(QPen(QColor(80, 170, 255), 1.5))
        for x, y, s in zip(self.lag_s, self.msd, self.sem):
            p.drawLine(pt(x, max(y - s, 0.0)), pt(x, y + s))
            p.drawEllipse(pt(x, y), 3.0, 3.0)
        p.setPen(QColor(200, 200, 200))
        p.drawText(QPointF(2, area.top() + 10), f"{y_max:.2g}")
        p.drawText(QPointF(2, area.bottom()), "0")
        p.drawText(QPointF(2, area.top() + 24), "um^2")
        p.drawText(QPointF(area.left(), h - 5), "lag time (s); fit MSD = 4 D t + c (orange)")
        p.drawText(QPointF(area.right() - 40, h - 5), f"{x_max:.2g}")
        p.end()
