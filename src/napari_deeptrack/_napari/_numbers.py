"""Numbers as a microscopist reads them: significant digits, scientific notation when small or large.

:func:`format_number` is the one formatting rule of the widgets (a camera gain of 2.3e-05
grey/photon, a background of 1.234e+05 photons, a wavelength of 0.447 um). :class:`SigFloatSpinBox`
is a magicgui ``FloatSpinBox`` that shows and accepts numbers that way (typing ``2.3e-5`` works), and
whose arrows change the second significant digit (0.0035 -> 0.0036, 1500 -> 1600).
"""

from __future__ import annotations

import math

from magicgui.widgets import FloatSpinBox

__all__ = ["SigFloatSpinBox", "format_number"]


def format_number(value, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits; scientific notation below 1e-3 or from 1e5 up.

    >>> format_number(2.3e-05), format_number(0.447), format_number(1500.0), format_number(123456.0)
    ('2.3e-05', '0.447', '1500', '1.235e+05')
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        mant, exp = f"{v:.{max(digits - 1, 0)}e}".split("e")
        if "." in mant:
            mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{exp}"
    return f"{v:.{digits}g}"


def _backend():
    """A magicgui Qt backend for FloatSpinBox whose QDoubleSpinBox formats with :func:`format_number`."""
    from magicgui.backends._qtpy.widgets import FloatSpinBox as QtFloatSpinBox
    from magicgui.backends._qtpy.widgets import QBaseRangedWidget
    from qtpy.QtGui import QValidator
    from qtpy.QtWidgets import QDoubleSpinBox

    class SigDoubleSpinBox(QDoubleSpinBox):
        def textFromValue(self, value):  # noqa: N802 - Qt API
            return format_number(value)

        def valueFromText(self, text):  # noqa: N802
            try:
                return float(text.strip().replace(",", "."))
            except ValueError:
                return self.value()

        def validate(self, text, pos):
            t = text.strip().replace(",", ".")
            try:
                v = float(t)
            except ValueError:
                ok = t == "" or t[-1] in "eE+-." or t in ("-", "+")
                state = QValidator.State.Intermediate if ok else QValidator.State.Invalid
                return state, text, pos
            inside = self.minimum() <= v <= self.maximum()
            return (QValidator.State.Acceptable if inside else QValidator.State.Intermediate), text, pos

        def stepBy(self, steps):  # noqa: N802 - the second significant digit
            v = self.value()
            step = 10 ** (math.floor(math.log10(abs(v))) - 1) if v else self.singleStep()
            self.setValue(v + steps * step)

    class SigBackend(QtFloatSpinBox):
        def __init__(self, **kwargs):
            QBaseRangedWidget.__init__(self, SigDoubleSpinBox, **kwargs)
            self._qwidget.setDecimals(15)  # stored exactly; shown by textFromValue

        def _mgui_set_step(self, value: float):
            self._qwidget.setSingleStep(value)

    return SigBackend


class SigFloatSpinBox(FloatSpinBox):
    """A ``FloatSpinBox`` showing :func:`format_number` (scientific notation when small or large)."""

    def __init__(self, **kwargs):
        try:
            backend = _backend()
        except ImportError:  # another magicgui backend layout: a plain spin box with many decimals
            super().__init__(**kwargs)
            self.native.setDecimals(8)
            return
        kwargs["widget_type"] = backend
        super(FloatSpinBox, self).__init__(**kwargs)
