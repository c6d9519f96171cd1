"""Fixtures shared by several test modules."""

import tempfile
from pathlib import Path

import pytest
import torch


def pytest_collection_finish(session):
    """Start the examples' ``--quick`` runs (``tests/test_examples_quick.py``) once the tests are collected:
    their processes then run beside the rest of the suite instead of after it."""
    if session.config.option.collectonly:
        return
    selected = {item.originalname for item in session.items}
    modules = {item.module for item in session.items if item.module.__name__.endswith("test_examples_quick")}
    for module in modules:
        module.start_selected(selected, Path(tempfile.mkdtemp(prefix="napari-deeptrack-examples-")))


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread (the CI machine has 2 cores; training tests are faster and
    repeatable this way), restoring the previous setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
