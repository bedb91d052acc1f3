"""MAF and IAF: triangular Jacobians, and one network pass in each family's fast direction."""

import pytest
import torch

import pyro_flows.transforms as T
from pyro_flows.flows import normalizing_flow


def count_passes(network):
    calls = []
    network.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("helper", [T.maf, T.iaf])
@pytest.mark.parametrize("order", ["natural", "reverse", "random"])
def test_jacobian_is_triangular_in_the_order(helper, order):
    torch.manual_seed(0)
    t = helper(5, hidden_dims=[20], order=order).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(t.with_cache(0), x)
    perm = t.network.permutation
    ordered = jac[perm][:, perm]  # rows and columns in the autoregressive order
    assert torch.count_nonzero(torch.triu(ordered, diagonal=1)) == 0
    assert torch.count_nonzero(torch.tril(ordered, diagonal=-1)) > 0


def test_maf_scores_data_in_one_pass_and_samples_in_d():
    dim = 6
    t = T.maf(dim, hidden_dims=[24])
    calls = count_passes(t.network)
    flow = normalizing_flow("maf", dim, num_layers=1, elementwise_affine=False)
    flow.transform.parts[0].network = t.network
    flow.log_prob(torch.randn(8, dim))
    assert len(calls) == 1
    calls.clear()
    flow.sample((8,))
    assert len(calls) == dim


def test_iaf_samples_and_scores_its_samples_in_one_pass():
    dim = 6
    flow = normalizing_flow("iaf", dim, num_layers=1)
    calls = count_passes(flow.transform.parts[0].network)
    d = flow()
    x = d.rsample((8,))
    d.log_prob(x)  # its own sample: the cached base draw gives the log-determinant
    assert len(calls) == 1
    calls.clear()
    flow.log_prob(torch.randn(8, dim))  # arbitrary data: the D-pass inverse
    assert len(calls) == dim


def test_sampling_defers_the_log_det_and_scoring_resolves_it():
    # Drawing samples alone never sums the log-scales; scoring them gets the exact value.
    from pyro_flows.transforms.cache import Deferred

    torch.manual_seed(0)
    t = T.iaf(3, hidden_dims=[8]).double()
    with torch.no_grad():
        for p in t.parameters():
            p.normal_(0, 0.3)
    z = torch.randn(5, 3, dtype=torch.float64)
    y = t(z)
    assert isinstance(t._saved.ladj, Deferred)
    expected = t._ladj(z.clone(), y.clone())
    torch.testing.assert_close(t.log_abs_det_jacobian(z, y), expected, rtol=0, atol=1e-12)
    assert not isinstance(t._saved.ladj, Deferred)  # resolved once, then kept


@pytest.mark.parametrize("helper", [T.maf, T.iaf])
def test_in_place_fast_path_matches_pyro_network_values_and_gradients(helper):
    # Our MADE's outputs are overwritten in place (tanh_, exp_, addcmul_); the same layer on
    # Pyro's own network takes the out-of-place path. Values and gradients must agree.
    from pyro.nn import AutoRegressiveNN

    from pyro_flows.transforms.cache import resolve

    torch.manual_seed(0)
    fast = helper(4, hidden_dims=[12, 12]).double()
    with torch.no_grad():
        for p in fast.parameters():
            p.normal_(0, 0.3)
    net = fast.network
    pyro_net = AutoRegressiveNN(4, [12, 12], param_dims=[1, 1], permutation=net.permutation)
    pyro_net.double().load_state_dict(net.state_dict())
    slow = type(fast)(4, pyro_net, log_scale_bound=fast.log_scale_bound)
    x = torch.randn(6, 4, dtype=torch.float64)

    def outputs(t):
        # The fast direction of each family, its log-det, and their gradients.
        fn = t._inverse_and_ladj if isinstance(t, T.MaskedAutoregressive) else t._call_and_ladj
        out, ladj = fn(x)
        ladj = resolve(ladj)
        loss = out.sin().sum() + ladj.sum()
        grads = torch.autograd.grad(loss, list(t.network.parameters()))
        return [out.detach(), ladj.detach(), *grads]

    for a, b in zip(outputs(fast), outputs(slow), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
