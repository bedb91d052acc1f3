"""Data of another dtype than the flow's (float64 or integers for a float32 flow) is cast."""

import numpy as np
import pytest
import torch

from pyro_flows.density import DensityEstimator
from pyro_flows.flows import normalizing_flow


def test_log_prob_and_inverse_cast_x_to_the_flow_dtype():
    torch.manual_seed(0)
    flow = normalizing_flow("maf", 2, num_layers=2, hidden_dims=[8])
    x = torch.randn(5, 2, dtype=torch.float64)
    expected = flow.log_prob(x.float())
    assert flow.log_prob(x).dtype == torch.float32
    torch.testing.assert_close(flow.log_prob(x), expected)
    torch.testing.assert_close(flow.inverse(x), flow.inverse(x.float()))
    ints = torch.tensor([[1, 2], [3, -1]])
    torch.testing.assert_close(flow.log_prob(ints), flow.log_prob(ints.float()))
    with pytest.raises(ValueError, match="x has dtype torch.bool; the flow takes real values"):
        flow.log_prob(torch.ones(2, 2, dtype=torch.bool))


def test_context_is_cast_to_the_flow_dtype():
    torch.manual_seed(0)
    flow = normalizing_flow("maf", 2, num_layers=2, hidden_dims=[8], context_dim=1)
    x, c = torch.randn(5, 2), torch.randn(5, 1, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x, c), flow.log_prob(x, c.float()))
    assert flow.sample((3,), c[0]).dtype == torch.float32
    assert flow(c).log_prob(x).dtype == torch.float32


def test_density_estimator_takes_integer_columns():
    rng = np.random.default_rng(0)
    x = np.c_[rng.integers(0, 1000, 300), rng.integers(-500, 500, 300)]
    est = DensityEstimator(num_layers=1, hidden_dims=(8,), num_steps=5, seed=0).fit(x)
    np.testing.assert_array_equal(est.score_samples(x), est.score_samples(x.astype(float)))
