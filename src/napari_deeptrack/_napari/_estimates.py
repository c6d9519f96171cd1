"""What "Match to layer" measured, and how far the simulation is from the data: two views of the
Simulate widget.

- :class:`EstimatesTable`: one row per calibration estimate
  (:class:`~napari_deeptrack.analysis.match.Estimate`): parameter | value | +- | unit | from. The
  value is editable (polarity by a drop-down); an edit calls ``on_edit(name, value)``, and the widget
  writes the edited calibration into the simulation. Estimates that are for information only (not written
  into the simulation) are greyed.
- :func:`coverage_html`: the per-component sim-vs-real distance
  (:func:`~napari_deeptrack.analysis.realism.sim_real_distance`) with each component's threshold, the
  coverage verdict and what to change, as a small rich-text table.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from ._numbers import format_number

__all__ = ["COLUMNS", "EstimatesTable", "coverage_html"]

COLUMNS = ("parameter", "value", "\u00b1", "unit", "from")
#: widths (px) of all columns but the last
COLUMN_WIDTHS = (108, 82, 44, 52)
_POLARITIES = ("bright", "dark")
_VERDICT_COLOUR = {"covered": "#4caf50", "partly covered": "#ffa726", "not covered": "#ef5350"}


class EstimatesTable:
    """A compact, editable table of a :class:`~napari_deeptrack.analysis.match.Calibration`."""

    def __init__(self, on_edit: Callable[[str, object], None], max_visible_rows: int = 9):
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QSizePolicy, QTableWidget

        self._on_edit = on_edit
        self._max_rows = int(max_visible_rows)
        self._filling = False
        self.names: list[str] = []
        t = QTableWidget(0, len(COLUMNS))
        t.setHorizontalHeaderLabels(list(COLUMNS))
        t.verticalHeader().setVisible(False)
        t.verticalHeader().setDefaultSectionSize(22)
        t.setWordWrap(False)
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
            | QAbstractItemView.EditTrigger.AnyKeyPressed
        )
        head = t.horizontalHeader()
        # fixed, compact columns (a 420 px dock); "from" takes the rest, elided, full text in the tooltip
        for i, width in enumerate(COLUMN_WIDTHS):
            head.setSectionResizeMode(i, QHeaderView.ResizeMode.Interactive)
            t.setColumnWidth(i, width)
        head.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        head.setMinimumSectionSize(24)
        t.setTextElideMode(Qt.TextElideMode.ElideRight)
        t.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        t.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        t.setMinimumWidth(10)
        t.setToolTip("Double-click a value to edit it; the simulation and its preview follow.")
        t.itemChanged.connect(self._item_changed)
        t.setVisible(False)
        self.native = t

    # ------------------------------------------------------------------ content
    def show_calibration(self, calibration, edited: dict | None = None) -> None:
        """Fill the table from ``calibration`` (``edited``: names the user set, shown as such)."""
        from qtpy.QtCore import Qt
        from qtpy.QtGui import QBrush, QColor
        from qtpy.QtWidgets import QComboBox, QTableWidgetItem

        edited = edited or {}
        t = self.native
        self._filling = True
        try:
            t.clearContents()
            t.setRowCount(len(calibration.estimates))
            self.names = [e.name for e in calibration.estimates]
            grey = QBrush(QColor(140, 140, 140))
            for row, e in enumerate(calibration.estimates):
                source = "set by you" if e.name in edited else e.source
                cells = [
                    e.name,
                    format_number(e.value) if not isinstance(e.value, str) else e.value,
                    format_number(e.uncertainty, 2) if e.uncertainty is not None else "",
                    e.unit,
                    source,
                ]
                for col, text in enumerate(cells):
                    item = QTableWidgetItem(str(text))
                    flags = Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled
                    if col == 1 and not isinstance(e.value, str):
                        flags |= Qt.ItemFlag.ItemIsEditable
                    item.setFlags(flags)
                    tip = f"{e.name}: {cells[1]} {e.unit}".rstrip() + f"\nfrom: {source}"
                    if e.low is not None or e.high is not None:
                        lo = format_number(e.low) if e.low is not None else "-inf"
                        hi = format_number(e.high) if e.high is not None else "inf"
                        tip += f"\nkept within [{lo}, {hi}]"
                    if not e.applied:
                        tip += "\nfor information: not written into the simulation"
                        item.setForeground(grey)
                    item.setToolTip(tip)
                    t.setItem(row, col, item)
                if isinstance(e.value, str) and e.value in _POLARITIES:
                    combo = QComboBox()
                    combo.addItems(list(_POLARITIES))
                    combo.setCurrentText(e.value)
                    combo.setToolTip(f"{e.name}: the particles' contrast against the background")
                    combo.currentTextChanged.connect(lambda v, name=e.name: self._edited(name, v))
                    t.setCellWidget(row, 1, combo)
            rows = min(len(self.names), self._max_rows)
            height = t.horizontalHeader().sizeHint().height() + rows * t.verticalHeader().defaultSectionSize()
            t.setFixedHeight(height + 2 * t.frameWidth() + 2)
            t.setVisible(bool(self.names))
        finally:
            self._filling = False

    def clear(self) -> None:
        self.native.setRowCount(0)
        self.names = []
        self.native.setVisible(False)

    def rows(self) -> list[dict]:
        """What the table shows, one dict per row (column name -> text)."""
        out = []
        for row in range(self.native.rowCount()):
            cells = {}
            for col, name in enumerate(COLUMNS):
                widget = self.native.cellWidget(row, col)
                item = self.native.item(row, col)
                cells[name] = widget.currentText() if widget is not None else (item.text() if item else "")
            out.append(cells)
        return out

    def edit(self, name: str, value) -> None:
        """Type ``value`` into the value cell of ``name`` (what a user does; for scripts and tests)."""
        row = self.names.index(name)
        widget = self.native.cellWidget(row, 1)
        if widget is not None:
            widget.setCurrentText(str(value))
        else:
            self.native.item(row, 1).setText(str(value))

    def highlight(self, names) -> None:
        """Select the rows of ``names`` (the estimates a coverage warning points at)."""
        from qtpy.QtCore import QItemSelectionModel

        sel = self.native.selectionModel()
        sel.clearSelection()
        for name in names:
            if name in self.names:
                row = self.names.index(name)
                index = self.native.model().index(row, 0)
                sel.select(
                    index, QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
                )
                self.native.scrollTo(index)

    # ------------------------------------------------------------------ edits
    def _item_changed(self, item) -> None:
        if self._filling or item.column() != 1:
            return
        self._edited(self.names[item.row()], item.text().strip())

    def _edited(self, name: str, value) -> None:
        if not self._filling:
            self._on_edit(name, value)


# ---------------------------------------------------------------------------- distance
def coverage_html(comparison: dict | None) -> str:
    """The per-component distance of ``sim_real_distance`` as a rich-text table with the verdict."""
    if not comparison:
        return "sim vs real distance: - (select a real image to compare)"
    from ..analysis.realism import THRESHOLDS

    verdict = str(comparison.get("verdict", ""))
    colour = _VERDICT_COLOUR.get(verdict, "#cccccc")
    head = (
        f"sim vs real distance: <b>{comparison['distance']:.2f}</b>, "
        f"<b style='color:{colour}'>{html.escape(verdict)}</b>"
    )
    rows = []
    for name, value in comparison.get("components", {}).items():
        ok = comparison.get("ok", {}).get(name, True)
        mark = (
            "<span style='color:#4caf50'>\u2713</span>" if ok else "<span style='color:#ef5350'>\u2717</span>"
        )
        limit = THRESHOLDS.get(name)
        rows.append(
            f"<tr><td>{html.escape(name.replace('_', ' '))}</td><td align='right'>{value:.2f}</td>"
            f"<td align='right'>{'' if limit is None else f'&le; {limit:.2f}'}</td><td>{mark}</td></tr>"
        )
    table = (
        "<table cellspacing='0' cellpadding='1'><tr><th align='left'>component</th><th>distance</th>"
        "<th>limit</th><th></th></tr>" + "".join(rows) + "</table>"
    )
    reasons = comparison.get("reasons") or []
    advice = "".join(f"<br>\u2022 {html.escape(r)}" for r in reasons)
    return head + table + advice
