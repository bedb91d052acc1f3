import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_clean_param_store():
    """Every test starts from the same seed and an empty Pyro parameter store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Runs the test with float64 as torch's default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
