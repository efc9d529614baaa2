"""Project-wide test settings."""

import pytest
import torch

from tests._lightning_alias import install, requested

if requested() is not None:  # LIGHTNING_DNN_TEST_PACKAGE=lightning: the tests' pytorch_lightning is lightning.pytorch
    install()


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test process: on a 2-core machine, tiny ops under torch's default thread pool
    cost ~100x more when another process is busy. DDP tests spawn their own processes and set their own."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
