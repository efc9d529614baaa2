"""Project-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test process: on a 2-core machine, tiny ops under torch's default thread pool
    cost ~100x more when another process is busy. DDP tests spawn their own processes and set their own."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
