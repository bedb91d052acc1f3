import pytest
import torch

# The helper module sbi_gaussian.py sits next to these tests.


@pytest.fixture(autouse=True)
def _one_thread():
    """Small fits run fastest on one thread (and do not fight over shared cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
