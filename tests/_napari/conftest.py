"""Fixtures shared by the napari tests."""

import pytest


@pytest.fixture
def messages():
    """Collect napari notifications (message, severity)."""
    from napari.utils.notifications import notification_manager

    got = []

    def on(event):
        n = event.value if hasattr(event, "value") else event
        got.append((str(n.message), str(n.severity)))

    notification_manager.notification_ready.connect(on)
    yield got
    notification_manager.notification_ready.disconnect(on)
