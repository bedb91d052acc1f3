import itertools

import pytest
import torch

from pyro_flows.matching import (
    IndependentCoupling,
    OTCoupling,
    PairedCoupling,
    get_coupling,
    transport_cost,
)


def test_ot_coupling_lowers_the_transport_cost():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(256, 2, generator=g)
    x1 = torch.randn(256, 2, generator=g) * 0.5 + torch.tensor([3.0, 0.0])
    context = torch.arange(256.0).unsqueeze(-1)
    a0, a1, _ = IndependentCoupling()(x0, x1)
    b0, b1, c = OTCoupling()(x0, x1, context)
    independent, ot = transport_cost(a0, a1).item(), transport_cost(b0, b1).item()
    assert ot < 0.8 * independent
    # the source rows are permuted, the data rows and their context untouched
    assert torch.equal(b1, x1) and torch.equal(c, context)
    assert torch.equal(b0[b0[:, 0].argsort()], x0[x0[:, 0].argsort()])


def test_ot_coupling_is_the_optimal_permutation():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    best = min(transport_cost(x0[list(p)], x1).item() for p in itertools.permutations(range(6)))
    b0, b1, _ = OTCoupling()(x0, x1)
    assert transport_cost(b0, b1).item() == pytest.approx(best, rel=1e-6)


def test_paired_coupling_and_names():
    x0, x1 = torch.randn(4, 2), torch.randn(4, 2)
    p0, p1, _ = PairedCoupling()(x0, x1)
    assert torch.equal(p0, x0) and torch.equal(p1, x1)
    assert PairedCoupling.paired and not OTCoupling.paired
    assert isinstance(get_coupling("ot"), OTCoupling)
    with pytest.raises(ValueError, match="unknown coupling"):
        get_coupling("sinkhorn")
    with pytest.raises(ValueError, match="same shape"):
        OTCoupling()(torch.randn(3, 2), torch.randn(4, 2))


def test_blockwise_ot_solves_each_block():
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(96, 2, generator=g), torch.randn(96, 2, generator=g) + 2
    b0, _, _ = OTCoupling(block_size=32)(x0, x1)
    for start in (0, 32, 64):
        block = slice(start, start + 32)
        exact, _, _ = OTCoupling()(x0[block], x1[block])
        assert torch.equal(b0[block], exact)
    full = transport_cost(OTCoupling()(x0, x1)[0], x1)
    assert full <= transport_cost(b0, x1) < transport_cost(x0, x1)
    with pytest.raises(ValueError, match="block_size"):
        OTCoupling(block_size=1)
