"""Doctest namespace: examples in docstrings may use ``torch`` and ``pyro`` without importing."""

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["pyro"] = pyro
    torch.manual_seed(0)
