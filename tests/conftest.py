"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread (the CI machine has 2 cores; training tests are faster and
    repeatable this way), restoring the previous setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
