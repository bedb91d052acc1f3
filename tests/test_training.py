import math

import numpy as np
import pytest
import torch
from torch import nn

from pyro_flows.training import FitHistory, fit


class Gaussian(nn.Module):
    """A diagonal Gaussian with learnable mean and log standard deviation."""

    def __init__(self, dim=2, loc=0.0):
        super().__init__()
        self.loc = nn.Parameter(torch.full((dim,), float(loc)))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def log_prob(self, x):
        return torch.distributions.Normal(self.loc, self.log_scale.exp()).log_prob(x).sum(-1)


class ConditionalGaussian(nn.Module):
    """x | c ~ N(W c, 1)."""

    def __init__(self, dim=2, context_dim=3):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, context_dim))

    def log_prob(self, x, c):
        return torch.distributions.Normal(c @ self.weight.T, 1.0).log_prob(x).sum(-1)


class Drift(nn.Module):
    """log q = theta for every row: Adam moves theta by about lr at each step."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(()))

    def log_prob(self, x):
        return self.theta.expand(x.shape[0]) - 0.0 * x.sum(-1)


def test_fit_reaches_true_entropy(float64):
    mu, sigma = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])
    gen = torch.Generator().manual_seed(0)
    data = mu + sigma * torch.randn(20_000, 2, generator=gen)
    val = mu + sigma * torch.randn(50_000, 2, generator=gen)
    model = Gaussian()
    h = fit(
        model, data, val_data=val, num_steps=400, lr=0.05, batch_size=256, progress=False, seed=0
    )
    assert isinstance(h, FitHistory)
    true = torch.distributions.Normal(mu, sigma)
    # the fitted NLL is that of the true density on the same rows, itself close to the entropy
    assert h.val_nll[-1] == pytest.approx(-true.log_prob(val).sum(-1).mean().item(), abs=0.005)
    assert h.val_nll[-1] == pytest.approx(true.entropy().sum().item(), abs=0.03)
    assert h.val_nll[-1] < h.val_nll[0] - 1
    assert torch.allclose(model.loc, mu, atol=0.05)
    assert torch.allclose(model.log_scale.exp(), sigma, rtol=0.03)
    # history bookkeeping
    assert h.num_steps == len(h.train_loss) == 400
    assert h.val_steps == [0, 50, 100, 150, 200, 250, 300, 350, 400]
    assert len(h.val_nll) == len(h.val_steps)
    assert h.best_val_nll == min(h.val_nll)
    assert h.best_step == h.val_steps[h.val_nll.index(min(h.val_nll))]
    assert not h.stopped_early
    assert np.mean(h.train_loss[-50:]) < np.mean(h.train_loss[:50])


def test_val_steps_include_last_step():
    h = fit(Gaussian(), torch.randn(100, 2), num_steps=120, eval_every=50, progress=False)
    assert h.val_steps == [0, 50, 100, 120]


def test_seed_makes_fit_reproducible():
    data = torch.randn(500, 2)
    runs = []
    for _ in range(2):
        model = Gaussian()
        h = fit(model, data, num_steps=30, batch_size=32, lr=0.05, progress=False, seed=7)
        runs.append((h.train_loss, h.val_nll, model.loc.detach().clone()))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2])
    h = fit(Gaussian(), data, num_steps=30, batch_size=32, lr=0.05, progress=False, seed=8)
    assert h.train_loss != runs[0][0]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    # constant: T * lr; cosine: lr * sum_t (1 + cos(pi t / T)) / 2 = lr * (T + 1) / 2
    [("constant", 40 * 0.01), ("cosine", 0.01 * 41 / 2)],
)
def test_schedules(schedule, expected):
    model = Drift()
    fit(
        model,
        torch.zeros(64, 1),
        num_steps=40,
        lr=0.01,
        schedule=schedule,
        val_fraction=0,
        progress=False,
    )
    assert model.theta.item() == pytest.approx(expected, rel=1e-4)


def test_early_stopping_restores_best_state():
    # train rows at 0, validation rows at 3: the validation NLL is lowest when loc passes 3
    train, val = torch.zeros(256, 1), torch.full((64, 1), 3.0)
    kwargs = {
        "val_data": val,
        "num_steps": 500,
        "lr": 0.1,
        "schedule": "constant",
        "patience": 3,
        "eval_every": 1,
        "progress": False,
        "seed": 0,
    }
    model = Gaussian(dim=1, loc=6.0)
    h = fit(model, train, **kwargs)
    assert h.stopped_early
    assert h.num_steps < 500
    assert h.val_steps[-1] == h.num_steps
    best = h.val_nll.index(min(h.val_nll))
    assert h.best_step == h.val_steps[best] and h.best_val_nll == h.val_nll[best]
    assert len(h.val_nll) == best + 1 + 3  # exactly `patience` evaluations without improvement
    # the restored parameters are those of the best evaluation
    torch.manual_seed(0)
    with torch.no_grad():
        assert -model.log_prob(val).mean().item() == pytest.approx(h.best_val_nll, abs=1e-6)

    model = Gaussian(dim=1, loc=6.0)
    h2 = fit(model, train, **kwargs, restore_best=False)
    with torch.no_grad():
        final = -model.log_prob(val).mean().item()
    assert h2.val_nll == h.val_nll and final == pytest.approx(h2.val_nll[-1])
    assert final > h2.best_val_nll


def test_no_validation():
    model = Gaussian()
    h = fit(model, torch.randn(50, 2), num_steps=10, val_fraction=0, progress=False)
    assert h.val_steps == [] and h.val_nll == []
    assert h.best_step is None and h.best_val_nll is None


def test_explicit_val_data_is_used_unsplit():
    data, val = torch.randn(40, 2), torch.randn(10, 2) + 5
    model = Gaussian()
    with torch.no_grad():
        before = -model.log_prob(val).mean().item()
    h = fit(model, data, val_data=val, num_steps=5, progress=False, restore_best=False)
    assert h.val_nll[0] == pytest.approx(before)


def test_context():
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]])
    c = torch.randn(4000, 3, generator=gen)
    x = c @ w.T + torch.randn(4000, 2, generator=gen)
    model = ConditionalGaussian()
    h = fit(model, x, context=c, num_steps=300, lr=0.05, progress=False, seed=0)
    assert torch.allclose(model.weight, w, atol=0.1)
    assert h.val_nll[-1] == pytest.approx(math.log(2 * math.pi * math.e), abs=0.1)
    # explicit validation rows need their context
    with pytest.raises(ValueError, match="val_context"):
        fit(model, x, context=c, val_data=x[:10], num_steps=1, progress=False)
    fit(model, x, context=c, val_data=x[:10], val_context=c[:10], num_steps=1, progress=False)


def test_numpy_and_dtypes():
    data = np.random.default_rng(0).normal(size=(100, 2))  # float64
    model = Gaussian().double()
    fit(model, data, num_steps=3, progress=False)
    assert model.loc.dtype == torch.float64
    model = Gaussian()  # float32 model: the float64 data are cast to float32
    fit(model, data, num_steps=3, progress=False)
    assert model.loc.dtype == torch.float32


def test_batch_size_larger_than_data():
    h = fit(Gaussian(), torch.randn(20, 2), batch_size=512, num_steps=3, progress=False)
    assert h.num_steps == 3


def test_model_mode_is_restored_and_validation_runs_in_eval_mode():
    seen = set()

    class Spy(Gaussian):
        def log_prob(self, x):
            seen.add(self.training)
            return super().log_prob(x)

    model = Spy()
    model.eval()
    fit(model, torch.randn(100, 2), num_steps=2, eval_every=1, progress=False)
    assert not model.training
    assert seen == {True, False}


def test_progress_bar_runs_without_warnings(capsys):
    fit(Gaussian(), torch.randn(100, 2), num_steps=25, eval_every=10, progress=True)
    err = capsys.readouterr().err
    assert "25/25" in err and "val=" in err


def test_non_finite_loss_names_the_step():
    class Breaks(Gaussian):
        calls = 0

        def log_prob(self, x):
            lp = super().log_prob(x)
            if self.training:
                self.calls += 1
                if self.calls == 4:
                    return lp * math.nan
            return lp

    model = Breaks()
    with pytest.raises(FloatingPointError, match="step 4"):
        fit(model, torch.randn(100, 2), num_steps=10, progress=False, restore_best=True)
    # the best state (step 0, the only evaluation) was reloaded
    assert torch.equal(model.loc.detach(), torch.zeros(2))


def test_log_prob_shape_is_checked():
    class Summed(Gaussian):
        def log_prob(self, x):
            return super().log_prob(x).sum()

    with pytest.raises(ValueError, match="one log-density per row"):
        fit(Summed(), torch.randn(100, 2), num_steps=1, progress=False)


def test_model_without_log_prob():
    with pytest.raises(TypeError, match="log_prob"):
        fit(nn.Linear(2, 2), torch.randn(10, 2), progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"data": torch.randn(10)}, ValueError, "data must be 2-D"),
        ({"data": torch.randn(2, 3, 4)}, ValueError, "data must be 2-D"),
        ({"data": torch.ones(10, 2, dtype=torch.long)}, ValueError, "data must hold floating"),
        ({"data": [[0.0, 1.0]]}, TypeError, "data must be"),
        ({"context": torch.randn(9, 3)}, ValueError, r"context must have one row.*\(10\).*9"),
        ({"context": torch.full((10, 3), math.nan)}, ValueError, "context contains 30 NaN"),
        ({"val_data": torch.full((5, 2), math.inf)}, ValueError, "val_data contains 10 NaN"),
        ({"val_fraction": 1.0}, ValueError, "val_fraction"),
        ({"val_fraction": -0.1}, ValueError, "val_fraction"),
        ({"val_fraction": 0.05}, ValueError, r"val_fraction=0.05 of 10 rows.*0 validation"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"eval_every": 0}, ValueError, "eval_every"),
        ({"patience": 0}, ValueError, "patience"),
        ({"patience": 2, "val_fraction": 0}, ValueError, "patience needs validation"),
        ({"schedule": "linear"}, ValueError, r"schedule 'linear'.*\['constant', 'cosine'\]"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay"),
        ({"clip_grad_norm": 0.0}, ValueError, "clip_grad_norm"),
        ({"val_data": torch.randn(5, 3)}, ValueError, "val_data"),
        ({"val_context": torch.randn(5, 3)}, ValueError, "val_context"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    kwargs = {"data": torch.randn(10, 2), "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        fit(Gaussian(), **kwargs)


def test_non_finite_data_is_counted():
    data = torch.randn(10, 2)
    data[0, 0], data[3, 1] = math.nan, math.inf
    with pytest.raises(ValueError, match="data contains 2 NaN or infinite"):
        fit(Gaussian(), data, progress=False)


def test_clip_and_weight_decay_run():
    h = fit(
        Gaussian(),
        torch.randn(100, 2),
        num_steps=5,
        clip_grad_norm=0.1,
        weight_decay=0.1,
        progress=False,
    )
    assert all(math.isfinite(v) for v in h.train_loss)


class Recording(Gaussian):
    """A Gaussian that records what fit's data-dependent hook saw, and when."""

    def __init__(self):
        super().__init__()
        self.seen = None
        self.scored_before_hook = False

    def initialize_from_data(self, x, c=None):
        self.seen = (x.clone(), None if c is None else c.clone())
        return True

    def log_prob(self, x, c=None):
        if self.seen is None:
            self.scored_before_hook = True
        return super().log_prob(x)


def test_fit_calls_initialize_from_data_with_the_training_rows_first():
    data = torch.randn(40, 2, dtype=torch.float64)
    context = torch.randn(40, 3, dtype=torch.float64)
    model = Recording()
    fit(model, data, context=context, num_steps=2, val_fraction=0.25, progress=False, seed=0)
    x, c = model.seen
    assert not model.scored_before_hook
    assert x.shape == (30, 2) and c.shape == (30, 3)
    assert x.dtype == torch.float64  # the rows in their own precision, before the cast
    # exactly the training rows (the split's complement of the validation rows), paired
    rows = {tuple(r) for r in torch.cat([data, context], 1).tolist()}
    assert {tuple(r) for r in torch.cat([x, c], 1).tolist()} <= rows
    model = Recording()
    fit(model, data, num_steps=1, val_data=data[:5], progress=False)
    assert model.seen[1] is None and torch.equal(model.seen[0], data)
