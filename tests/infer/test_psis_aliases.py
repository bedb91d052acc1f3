"""psis_diagnostic accepts Pyro's argument names instead of passing them to the model."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_flows.infer import psis_diagnostic

Y = torch.tensor([0.3, 1.2, -0.4, 0.9, 2.0], dtype=torch.float64)
POST_VAR = 1 / (1 + len(Y))
POST_MEAN = Y.sum().item() * POST_VAR


def model(y):  # takes no keyword arguments: an alias passed through would raise TypeError
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def narrow_guide(y):  # half the posterior's width: heavy-tailed weights, k-hat > 0.7
    scale = torch.tensor(0.5 * math.sqrt(POST_VAR), dtype=torch.float64)
    pyro.sample("mu", dist.Normal(torch.tensor(POST_MEAN, dtype=torch.float64), scale))


def k_hat(**kwargs):
    pyro.set_rng_seed(3)
    return psis_diagnostic(model, narrow_guide, Y, **kwargs)


def test_num_particles_is_num_samples():
    assert k_hat(num_particles=500) == k_hat(num_samples=500)
    assert k_hat(num_particles=500) != k_hat(num_samples=400)  # the count is used
    assert k_hat() == k_hat(num_samples=1000)  # the default is unchanged


def test_max_simultaneous_particles_is_chunk_size():
    chunked = k_hat(num_samples=300, max_simultaneous_particles=100)
    assert chunked == k_hat(num_samples=300, chunk_size=100)
    assert math.isfinite(chunked) and chunked > 0.5


def test_a_name_and_its_alias_together_are_refused():
    with pytest.raises(TypeError, match="num_particles"):
        psis_diagnostic(model, narrow_guide, Y, num_samples=10, num_particles=10)
    with pytest.raises(TypeError, match="max_simultaneous_particles"):
        psis_diagnostic(model, narrow_guide, Y, chunk_size=10, max_simultaneous_particles=10)
