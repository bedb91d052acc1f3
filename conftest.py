"""Doctest namespace: examples in docstrings may use ``torch`` and ``pyro`` without importing."""

import pyro
import pytest
import torch

# The networks in tests and doctests are tiny: one thread is fastest, and several threads
# stall each other whenever the machine is busy (a 5-layer MAF step: 5 ms vs up to 300 ms).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["pyro"] = pyro
    torch.manual_seed(0)
