"""Dock layout shared by the widgets: a form that scrolls inside a narrow dock, wrapping labels,
collapsible sections.

napari docks a magicgui widget's ``.native``, which for ``Container(scrollable=True)`` is the inner
widget *without* its scroll area: the form then sets the dock's minimum size (979 px tall for Simulate).
Here the outer container holds a real :class:`QScrollArea` with the form inside, so every widget fits a
420 px wide dock on a 900 px tall screen and the canvas keeps its room.
"""

from __future__ import annotations

from magicgui.widgets import Container, Label

__all__ = ["DOCK_WIDTH_PX", "collapsible", "scroll_form", "text_row", "wrap_labels"]

#: The dock width every widget must fit (tested).
DOCK_WIDTH_PX = 420


def wrap_labels(form: Container) -> None:
    """Let every free-text Label of ``form`` (recursively) wrap instead of widening the dock."""
    for w in form:
        if isinstance(w, Label):
            w.native.setWordWrap(True)
            w.native.setMinimumWidth(10)
        elif isinstance(w, Container):
            wrap_labels(w)


def text_row(label: Label) -> Container:
    """A free text that spans the dock's whole width (in a labelled form it would sit in the narrow
    value column and wrap after every word)."""
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.MinimumExpanding)
    row = Container(widgets=[label], labels=False)
    row.native.layout().setContentsMargins(0, 0, 0, 0)
    return row


def collapsible(title: str, widgets: list, expanded: bool = False):
    """A collapsible section (superqt ``QCollapsible``) holding a labelled magicgui form.

    Returns ``(section, inner)``: the Qt widget to add to a layout and the magicgui Container inside.
    """
    from superqt import QCollapsible

    inner = Container(widgets=widgets)
    wrap_labels(inner)
    section = QCollapsible(title)
    section.addWidget(inner.native)
    if expanded:
        section.expand(animate=False)
    else:
        section.collapse(animate=False)
    return section, inner


def scroll_form(outer: Container, form: Container, footer=None) -> None:
    """Put ``form`` into a vertical scroll area inside ``outer`` (+ an optional fixed ``footer`` widget)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy

    wrap_labels(form)
    form.native.layout().addStretch(1)  # rows stay compact at the top instead of spreading out
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setWidget(form.native)
    area.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
    layout = outer.native.layout()
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(area, 1)
    if footer is not None:
        layout.addWidget(footer)
    outer.scroll_area = area

    def fit_width() -> None:
        width = min(
            form.native.minimumSizeHint().width() + area.verticalScrollBar().sizeHint().width() + 4,
            DOCK_WIDTH_PX,
        )
        area.setMinimumWidth(width)  # the form is never clipped on the right
        outer.native.setMinimumWidth(width)

    fit_width()
    # the style (fonts, margins) is applied when the dock is first shown: measure again then
    area._fit_filter = _show_filter(fit_width)
    area.installEventFilter(area._fit_filter)


def _on_show_class():
    from qtpy.QtCore import QEvent, QObject

    class OnShow(QObject):
        """Calls ``callback`` whenever the watched widget is shown."""

        def __init__(self, callback):
            super().__init__()
            self._callback = callback

        def eventFilter(self, obj, event):  # noqa: N802 - Qt API
            if event.type() == QEvent.Type.Show:
                self._callback()
            return False

    return OnShow


def _show_filter(callback):
    """An event filter calling ``callback`` on Show (its class is built lazily: no Qt at import)."""
    return _on_show_class()(callback)
