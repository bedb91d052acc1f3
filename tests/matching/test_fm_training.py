import math

import pyro.distributions as dist
import pytest
import torch

from pyro_flows.matching import (
    FlowMatchingPrior,
    RectifiedFlowPath,
    fit_flow_matching,
    reflow_pairs,
    solve_field,
)
from pyro_flows.nn import VectorField


def _data(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([2.0, -1.0]) + 0.5 * torch.randn(n, 2, generator=g)


def test_history_validation_nll_and_callback():
    field = VectorField(2, [32, 32])
    stops = []

    def callback(step, history):
        stops.append(step)
        return step == 150

    history = fit_flow_matching(
        field,
        _data(),
        val_data=_data(300, seed=1),
        val_nll=True,
        nll_options={"method": "rk4", "num_steps": 8},
        eval_every=50,
        num_steps=400,
        lr=3e-3,
        seed=0,
        progress=False,
        callback=callback,
    )
    assert history.num_steps == 150 and stops[-1] == 150
    assert history.val_steps == [0, 50, 100, 150]
    assert len(history.val_nll) == 4 and history.seconds > 0
    # the NLL of N((2, -1), 0.25 I) is 2 * (0.5 log(2 pi e 0.25)) = 1.45; untrained is far worse
    assert history.val_nll[0] > history.val_nll[-1]
    assert history.val_nll[-1] < 1.45 + 0.3
    assert history.val_loss[-1] < history.val_loss[0]


def test_ot_coupling_learns_straighter_paths():
    data = _data()
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    results = {}
    for coupling in ("independent", "ot"):
        field = VectorField(2, [32, 32], time_freqs=2)
        fit_flow_matching(
            field,
            data,
            coupling=coupling,
            num_steps=400,
            batch_size=128,
            lr=3e-3,
            seed=0,
            progress=False,
        )
        with torch.no_grad():
            end = solve_field(field, z, rtol=1e-6, atol=1e-6)
            one_step = solve_field(field, z, method="euler", num_steps=1)
        results[coupling] = (one_step - end).pow(2).sum(-1).mean().item()
    # one Euler step is exact on straight paths: OT's error is a fraction of independent's
    assert results["ot"] < 0.5 * results["independent"], results


def test_any_source_and_paired_reflow():
    source = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)
    field = VectorField(2, [32, 32])
    fit_flow_matching(
        field,
        _data(),
        source=source,
        path="rectified",
        num_steps=500,
        lr=3e-3,
        seed=0,
        progress=False,
    )
    prior = FlowMatchingPrior(field, source, method="rk4", num_steps=10)
    draws = prior.sample((2000,))
    assert torch.allclose(draws.mean(0), torch.tensor([2.0, -1.0]), atol=0.15)
    # one round of reflow on the flow's own pairs
    x0, x1 = reflow_pairs(field, source.sample((2000,)), method="rk4", num_steps=10)
    second = VectorField(2, [32, 32])
    history = fit_flow_matching(
        second,
        x1,
        source_data=x0,
        coupling="paired",
        path=RectifiedFlowPath(),
        num_steps=300,
        lr=3e-3,
        seed=0,
        progress=False,
    )
    assert history.train_loss[-1] < history.train_loss[0]


def test_guided_conditional_training():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (4000, 1), generator=g).float()
    centres = 4 * labels - 2  # class 0 at -2, class 1 at +2
    data = centres + 0.3 * torch.randn(4000, 1, generator=g)
    field = VectorField(1, [32, 32], context_dim=2)  # the context and its flag
    fit_flow_matching(
        field,
        data,
        context=labels,
        guidance=True,
        context_dropout=0.2,
        num_steps=800,
        lr=3e-3,
        seed=0,
        progress=False,
    )
    prior = FlowMatchingPrior(field, method="rk4", num_steps=10)
    for label, centre in ((0.0, -2.0), (1.0, 2.0)):
        p = prior.condition(torch.full((500, 1), label), guidance=1.0)
        assert p.batch_shape == (500,)
        draws = p.sample()
        assert abs(draws.mean().item() - centre) < 0.2
    # unconditional (w = 0): both classes
    mixed = prior.condition(torch.zeros(1000, 1), guidance=0.0).sample()
    assert 0.3 < (mixed > 0).float().mean().item() < 0.7
    assert math.isfinite(
        prior.condition(torch.ones(3, 1), guidance=2.0)
        .log_prob(torch.full((3, 1), 2.0))
        .sum()
        .item()
    )


def test_trainer_errors():
    field = VectorField(2, [8])
    data = _data(100)
    with pytest.raises(ValueError, match="source_data must be given exactly"):
        fit_flow_matching(field, data, coupling="paired", progress=False)
    with pytest.raises(ValueError, match="source_data must have the shape"):
        fit_flow_matching(field, data, coupling="paired", source_data=data[:50], progress=False)
    with pytest.raises(ValueError, match="guidance=True needs a context"):
        fit_flow_matching(field, data, guidance=True, progress=False)
    with pytest.raises(ValueError, match="val_nll=True needs val_data"):
        fit_flow_matching(field, data, val_nll=True, progress=False)
    with pytest.raises(ValueError, match="data must be 2-D"):
        fit_flow_matching(field, data[0], progress=False)
    with pytest.raises(ValueError, match="data contains"):
        fit_flow_matching(field, data.masked_fill(data > 2.5, float("nan")), progress=False)
    with pytest.raises(ValueError, match="source must give draws of shape"):
        fit_flow_matching(field, data, source=lambda n: torch.zeros(n, 3), progress=False)
    with pytest.raises(ValueError, match="lr must be"):
        fit_flow_matching(field, data, lr=0.0, progress=False)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda d: dict(data=d[:, :1].repeat(1, 3)),
            "data has 3 columns, but the field's input_dim is 2",
        ),
        (lambda d: dict(data=d[:0]), r"data is empty \(shape \(0, 2\)\)"),
        (lambda d: dict(data=d, val_data=d[:0]), "val_data is empty"),
        (lambda d: dict(data=d, context=d[:, :1]), "the field takes none"),
    ],
)
def test_trainer_names_bad_widths_and_empty_data(make, match):
    with pytest.raises(ValueError, match=match):
        fit_flow_matching(VectorField(2, [8]), num_steps=2, progress=False, **make(_data(50)))


def test_trainer_names_a_context_of_the_wrong_width():
    field = VectorField(2, [8], context_dim=3)
    data = _data(50)
    with pytest.raises(
        ValueError, match="context has 2 columns, but the field's context_dim is 3"
    ):
        fit_flow_matching(field, data, context=data, num_steps=2, progress=False)
