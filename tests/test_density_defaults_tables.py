"""DensityEstimator() at its defaults on small tables: lattice detection and dequantization,
the choice among a mixture and flows (recorded, saved), and no catastrophic row."""

import json
import math

import numpy as np
import pytest
import torch

from pyro_flows import density
from pyro_flows.density import DensityEstimator
from pyro_flows.dequantization import LatticeDequantization, lattice_widths
from pyro_flows.distributions import NormalizingFlow
from pyro_flows.transforms import Standardization

#: Few steps: the mixtures are fitted by EM, and the flows stop early on tables this small.
FAST = {"num_steps": 60, "seed": 0}


def clusters(n, seed, rounding=None):
    """Three elongated clusters in 4-D, optionally rounded to a grid (like iris, to 0.1)."""
    rng = np.random.default_rng(seed)
    means = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    k = rng.integers(0, 3, size=n)
    a = rng.normal(size=(4, 4)) * 0.15
    x = means[k] + rng.normal(size=(n, 4)) @ a
    return np.round(x / rounding) * rounding if rounding else x


def gaussian_nll(train, test):
    """Test NLL per row of the maximum-likelihood Gaussian of the training rows."""
    mvn = torch.distributions.MultivariateNormal(
        torch.as_tensor(train.mean(0)), torch.as_tensor(np.cov(train.T, bias=True))
    )
    return float(-mvn.log_prob(torch.as_tensor(test)).mean())


# -- lattice detection --------------------------------------------------------------------------


def test_lattice_widths_finds_rounded_scaled_and_integer_columns():
    rng = np.random.default_rng(0)
    n = 300
    x = np.c_[
        np.round(rng.normal(5, 1, n), 1),  # rounded to 0.1 (not exact in binary)
        np.round(rng.normal(0, 30, n)) * 0.0363,  # integers in scaled units
        rng.integers(0, 3, n),  # a count
        rng.normal(size=n),  # continuous
        np.round(rng.normal(0, 1e3, n), 2),  # a grid far finer than the spread
        np.round(rng.normal(0, 1, n) * 4) / 4 + 0.1,  # shifted grid of width 0.25
    ]
    h = lattice_widths(x)
    np.testing.assert_allclose(h[[0, 1, 2, 5]], [0.1, 0.0363, 1.0, 0.25], rtol=1e-6)
    assert h[3] == 0 and h[4] == 0  # continuous; 0.01 on a spread of 1000 does not matter
    # the grid's width follows the data's units
    np.testing.assert_allclose(lattice_widths(20 * x[:, :1] - 7), [2.0], rtol=1e-6)


def test_lattice_widths_refuses_bad_input():
    with pytest.raises(ValueError, match="x must have shape"):
        lattice_widths(np.zeros(5))
    with pytest.raises(ValueError, match="min_relative_width"):
        lattice_widths(np.zeros((5, 1)), min_relative_width=-1)


# -- the dequantised density --------------------------------------------------------------------


def normal_flow(dim):
    return NormalizingFlow(Standardization.identity(dim), dim, standardize=False).double()


def test_lattice_density_is_the_cell_average():
    # q = N(0, 1); width 1: p(x) = Phi(x + 1/2) - Phi(x - 1/2), on and off the grid
    p = LatticeDequantization(normal_flow(1), torch.tensor([1.0], dtype=torch.float64)).eval()
    x = torch.tensor([[0.0], [0.3], [2.0]], dtype=torch.float64)
    phi = torch.distributions.Normal(0.0, 1.0).cdf
    exact = (phi(x + 0.5) - phi(x - 0.5)).log().squeeze(-1)
    torch.testing.assert_close(p.log_prob(x), exact, atol=2e-3, rtol=0)
    # deterministic, one row's score independent of the others
    torch.testing.assert_close(p.log_prob(x[1:2]), p.log_prob(x)[1:2], atol=0, rtol=0)
    # a continuous column (width 0) keeps q's own density
    p2 = LatticeDequantization(normal_flow(2), torch.tensor([1.0, 0.0], dtype=torch.float64))
    y = torch.tensor([[0.0, 0.7]], dtype=torch.float64)
    expected = exact[0] + torch.distributions.Normal(0.0, 1.0).log_prob(torch.tensor(0.7))
    torch.testing.assert_close(p2.eval().log_prob(y)[0], expected.double(), atol=2e-3, rtol=0)


def test_lattice_density_trains_on_fresh_noise_and_samples_across_cells():
    p = LatticeDequantization(normal_flow(1), torch.tensor([1.0], dtype=torch.float64)).train()
    x = torch.zeros(1000, 1, dtype=torch.float64)
    lp = p.log_prob(x)
    assert lp.std() > 0  # one noise draw per row in train mode
    # E_u log q(u - 1/2) for q = N(0, 1): -log(2 pi)/2 - 1/24
    assert abs(float(lp.mean()) - (-0.5 * math.log(2 * math.pi) - 1 / 24)) < 0.01
    draws = p.sample((4000,))
    assert abs(float(draws.var()) - (1 + 1 / 12)) < 0.1


def test_lattice_density_refuses_bad_widths():
    with pytest.raises(ValueError, match="width must be"):
        LatticeDequantization(normal_flow(1), torch.tensor([-1.0]))


# -- the defaults -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rounded():
    """A small table rounded to 0.1 (like iris), split 300/100, fitted at the defaults."""
    x = clusters(400, 2, rounding=0.1)
    train, test = x[:300], x[300:]
    return train, test, DensityEstimator(**FAST).fit(train)


def test_defaults_detect_and_report_the_lattice(rounded):
    train, _, est = rounded
    np.testing.assert_allclose(est.lattice_, [0.1] * 4, rtol=1e-6)
    assert est.info_["dequantized"] == {str(j): pytest.approx(0.1) for j in range(4)}
    # dequantize=False leaves the rows as they are, and a continuous table is not dequantised
    cheap = {"flow": "maf", "num_layers": 1, "hidden_dims": (8,), "num_steps": 2}
    raw = DensityEstimator(dequantize=False, **cheap).fit(train)
    assert raw.lattice_ is None and "dequantized" not in raw.info_
    assert DensityEstimator(**cheap).fit(clusters(300, 1)).lattice_ is None


def test_no_held_out_row_is_catastrophic_on_rounded_data(rounded):
    # A model of the raw rounded values can pile its mass onto the grid. Held-out rows on the
    # grid, and between its points, keep sane scores.
    _, test, est = rounded
    # (the old default, a MAF on the raw rows, had minima of -15.4 on the grid, -21.4 off it)
    off_grid = test + 0.05  # halfway between grid points
    for rows in (test, off_grid):
        scores = est.score_samples(rows)
        assert np.isfinite(scores).all()
        assert scores.min() > -12, scores.min()
    # the density is the cell average, so an off-grid row scores like its neighbour on the grid
    assert abs(est.score(off_grid) - est.score(test)) < 1.0


def test_a_flow_on_counts_does_not_collapse_onto_them():
    # A MAF trained on the raw counts without early stopping puts spikes on the integers:
    # with dequantize=False this held-out minimum was -333 nats (and -136 between them).
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(size=400), rng.poisson(3.0, size=400)]
    train, test = x[:300], x[300:]
    est = DensityEstimator(
        "maf", num_layers=2, hidden_dims=(32, 32), num_steps=300, lr=1e-2, val_fraction=0, seed=0
    )
    with pytest.warns(UserWarning, match="column 1 holds only 9 distinct .* it is dequantized"):
        est.fit(train)
    np.testing.assert_allclose(est.lattice_, [0.0, 1.0])
    between = test + [0.0, 0.5]
    assert est.score_samples(test).min() > -40
    assert est.score_samples(between).min() > -40
    assert abs(est.score(test) - est.score(train)) < 0.3  # no gap from spikes on the counts


def test_defaults_beat_a_single_gaussian_on_a_small_table(rounded):
    train, test, est = rounded
    nll = -est.score(test)
    assert nll < gaussian_nll(train, test) - 0.5, (nll, gaussian_nll(train, test))
    assert nll < 1.2  # 0.74; the old default (a MAF on the raw rows, 1000 steps) had 1.75


def test_the_choice_is_recorded_and_survives_save_and_load(rounded, tmp_path):
    x, _, est = rounded
    sel = est.selection_
    assert sel is est.info_["selection"]
    assert sel["chosen"] in ("mixture", "flow on mixture", "flow")
    assert set(sel["candidates"]) >= {"flow", "flow on mixture", "mixture", "mixture K=3 full"}
    assert all(math.isfinite(v) for v in sel["candidates"].values())
    if sel["chosen"] == "mixture":
        assert sel["params"]["num_layers"] == 0 and sel["refit_on_all_rows"]
    # a flow replaces the mixture only when it is better on the validation rows
    finalists = {k: sel["candidates"][k] for k in ("mixture", "flow on mixture", "flow")}
    assert finalists[sel["chosen"]] <= finalists["mixture"]
    assert sum(sel["stacking_weights"].values()) == pytest.approx(1, abs=1e-3)
    path = tmp_path / "m.pt"
    est.save(path)
    loaded = DensityEstimator.load(path)
    assert loaded.selection_ == json.loads(json.dumps(sel))
    assert loaded.flow == "auto" and loaded.get_params() == est.get_params()
    np.testing.assert_array_equal(loaded.lattice_, est.lattice_)
    np.testing.assert_array_equal(loaded.score_samples(x[:20]), est.score_samples(x[:20]))
    np.testing.assert_array_equal(loaded.sample(5, seed=1), est.sample(5, seed=1))


def test_a_chosen_flow_survives_save_and_load(tmp_path):
    # Without validation rows there is nothing to choose by: the flow is fitted and recorded.
    x = clusters(200, 5)
    est = DensityEstimator(val_fraction=0, num_steps=20, seed=0).fit(x)
    assert est.selection_["chosen"] == "flow" and "no validation rows" in est.selection_["reason"]
    est.save(tmp_path / "f.pt")
    loaded = DensityEstimator.load(tmp_path / "f.pt")
    np.testing.assert_array_equal(loaded.score_samples(x[:10]), est.score_samples(x[:10]))


def test_base_alone_is_a_gaussian_mixture_fitted_by_em():
    rng = np.random.default_rng(6)
    x = np.r_[rng.normal(-4, 1, (200, 2)), rng.normal(4, 1, (200, 2))]
    est = DensityEstimator(
        "maf", num_layers=0, base="gmm", base_components=2, val_fraction=0.2, seed=0
    ).fit(x)
    assert est.history_.num_steps == 0 and est.history_.best_step == 0
    means = est.mean_ + est.scale_ * est.flow_.base.loc.detach().numpy()
    np.testing.assert_allclose(np.sort(means[:, 0]), [-4, 4], atol=0.3)


def test_auto_refuses_a_base_and_bad_dequantize():
    x = clusters(100, 7)
    with pytest.raises(ValueError, match="flow='auto' chooses the base itself"):
        DensityEstimator(base="gmm", base_components=2).fit(x)
    with pytest.raises(ValueError, match="dequantize must be 'auto' or False"):
        DensityEstimator(dequantize="yes").fit(x)
    with pytest.raises(ValueError, match="num_layers=0 .* cannot take a context"):
        DensityEstimator("maf", num_layers=0, num_steps=2).fit(x, context=x[:, :1])


def test_auto_with_a_context_fits_the_conditional_flow():
    x = clusters(200, 8)
    est = DensityEstimator(num_steps=10, seed=0).fit(x[:, :3], context=x[:, 3:])
    assert est.selection_["chosen"] == "flow" and "context" in est.selection_["reason"]
    assert est.score_samples(x[:5, :3], x[:5, 3:]).shape == (5,)


def test_version_2_files_load_without_dequantization(tmp_path):
    est = DensityEstimator("maf", num_layers=1, hidden_dims=(8,), num_steps=5, seed=0)
    est.fit(clusters(100, 9))
    path = tmp_path / "v2.pt"
    est.save(path)
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    del meta["params"]["dequantize"], meta["lattice"], meta["selection"]
    payload["meta"] = json.dumps(meta, sort_keys=True)
    payload["format_version"] = 2
    payload["sha256"] = density._digest(payload["meta"], payload["state_dict"])
    torch.save(payload, path)
    loaded = DensityEstimator.load(path)
    assert loaded.dequantize is False and loaded.lattice_ is None
    x = clusters(20, 10)
    np.testing.assert_array_equal(loaded.score_samples(x), est.score_samples(x))


@pytest.mark.slow
def test_iris_at_defaults_is_no_worse_than_a_validated_gmm():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.mixture import GaussianMixture
    from sklearn.model_selection import train_test_split

    x = load_iris().data  # measured to 0.1 cm
    train, test = train_test_split(x, test_size=0.25, random_state=0)
    fit, val = train_test_split(train, test_size=0.25, random_state=0)
    settings = [(k, cov) for k in range(1, 6) for cov in ("full", "tied", "diag", "spherical")]
    k, cov = max(
        settings,
        key=lambda s: GaussianMixture(s[0], covariance_type=s[1], random_state=0)
        .fit(fit)
        .score(val),
    )
    gmm = GaussianMixture(k, covariance_type=cov, random_state=0).fit(train)
    est = DensityEstimator(seed=0).fit(train)
    scores = est.score_samples(test)
    assert -scores.mean() <= -gmm.score(test) + 0.05
    assert scores.min() > -15


def test_the_summary_says_what_was_chosen_and_dequantized(rounded):
    _, _, est = rounded
    model, grid, rows = est.summary().splitlines()
    assert model.startswith("model: ") and "flow='auto'" in model
    chosen = {"mixture": "stacked mixture", "flow on mixture": "flow on a mixture"}
    assert chosen.get(est.selection_["chosen"], "normal base") in model
    assert grid.startswith("dequantized: 4 columns on a grid") and "0 (width 0.1)" in grid
    assert rows == "rows: 225 training, 75 validation"
    raw = DensityEstimator("maf", num_layers=1, num_steps=2, dequantize=False).fit(clusters(50, 1))
    assert "dequantize=False" in raw.summary() and "1 layer(s) of maf" in raw.summary()


def test_the_command_line_says_which_columns_it_dequantized(tmp_path, capsys):
    from pyro_flows.cli import main

    x = clusters(120, 11, rounding=0.1)
    path = tmp_path / "t.csv"
    np.savetxt(path, x, delimiter=",", header="a,b,c,d", comments="")
    args = ["fit", str(path), "--out", str(tmp_path / "m.pt"), "--steps", "2", "--layers", "1"]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dequantized: 4 columns on a grid" in out and "'a' (width 0.1)" not in out
    assert "a (width 0.1)" in out
