import importlib.util
from pathlib import Path

import pyro
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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


@pytest.fixture
def load_example():
    """Imports ``examples/NAME.py`` as a module: ``load_example("density_2d").main(...)``."""

    def load(name):
        path = EXAMPLES / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
