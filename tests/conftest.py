"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test, restored afterwards: the tests use tiny models, where
    intra-op threads only add overhead (and stall on a busy 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
