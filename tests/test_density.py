import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import pyro_flows.density as density
from pyro_flows.density import (
    FORMAT_VERSION,
    ContextStandardization,
    DensityEstimator,
    ModelFileError,
    Standardization,
)
from pyro_flows.distributions import NormalizingFlow
from pyro_flows.flows import build
from pyro_flows.transforms import ConditionalMaskedAutoregressive

# A 2-D Gaussian far from the origin with very different scales: a score in the wrong units
# would be off by log(10 * 0.1) terms and the offset, so matching it to TOL checks the units.
MU = np.array([100.0, -3.0])
COV = np.array([[100.0, 0.6], [0.6, 0.01]])
# Tolerance of |mean log q - mean log p| on 2000 test rows: the fitted MLE of 5 parameters
# from 2000 rows is off by about 5 / (2 * 2000) = 0.001 nats in KL; optimisation left over
# after a few hundred steps adds at most ~0.01.
TOL = 0.02


def gaussian(mu, cov, n, seed):
    return np.random.default_rng(seed).multivariate_normal(mu, cov, size=n)


@pytest.fixture(scope="module")
def fitted():
    x = gaussian(MU, COV, 2000, 0)
    est = DensityEstimator(
        "maf",
        num_layers=1,
        hidden_dims=(8,),
        num_steps=300,
        lr=2e-2,
        batch_size=500,
        seed=0,
        dtype="float64",
    )
    return est.fit(x, feature_names=["a", "b"])


def test_gaussian_scores_in_original_units_with_standardisation(fitted):
    test = gaussian(MU, COV, 2000, 1)
    true = multivariate_normal(MU, COV).logpdf(test)
    assert abs(fitted.score(test) - true.mean()) < TOL
    assert np.allclose(fitted.mean_, test.mean(0), rtol=0.05, atol=0.05)


def test_gaussian_scores_without_standardisation():
    mu, cov = np.array([2.0, -1.0]), np.array([[2.0, 0.6], [0.6, 0.5]])
    est = DensityEstimator(
        "maf",
        num_layers=1,
        hidden_dims=(8,),
        num_steps=800,
        # unstandardised data: 2e-2 made this one-layer MAF's fit seed-dependent, and 1e-2
        # too once MADE units started on their unmasked fan-in (issue 19)
        lr=5e-3,
        batch_size=500,
        seed=0,
        dtype="float64",
        standardize=False,
    ).fit(gaussian(mu, cov, 2000, 0))
    assert est.mean_ is None
    test = gaussian(mu, cov, 2000, 1)
    assert abs(est.score(test) - multivariate_normal(mu, cov).logpdf(test).mean()) < TOL


def test_standardisation_log_det_is_counted(fitted):
    # log q(x) = log q_core((x - mu) / sigma) - sum(log sigma), exactly.
    x = gaussian(MU, COV, 50, 2)
    core = NormalizingFlow(fitted.flow_.transform.parts[0], 2)
    z = torch.as_tensor((x - fitted.mean_) / fitted.scale_)
    expected = core.log_prob(z).detach().numpy() - np.log(fitted.scale_).sum()
    np.testing.assert_allclose(fitted.score_samples(x), expected, rtol=1e-12, atol=1e-10)


def test_standardization_transform(float64):
    t = Standardization(torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 2.0, 4.0]))
    x = torch.randn(5, 3)
    y = t(x)
    assert torch.allclose(t.inv(y.clone()), x)
    jac = torch.autograd.functional.jacobian(lambda v: t._call(v), x[0])
    ladj = t.log_abs_det_jacobian(x, y)
    assert ladj.shape == (5,)
    assert torch.allclose(ladj, torch.linalg.slogdet(jac).logabsdet.expand(5))
    assert torch.allclose(t.inv.log_abs_det_jacobian(y, x), -ladj)
    assert set(t.state_dict()) == {"loc", "scale"}
    assert not list(t.parameters())
    with pytest.raises(ValueError, match="scale must be > 0"):
        Standardization(torch.zeros(2), torch.tensor([1.0, 0.0]))


def test_context_standardization_feeds_standardised_context():
    inner = build("maf", 2, num_layers=1, context_dim=1, hidden_dims=[8])
    t = ContextStandardization(inner, torch.tensor([100.0]), torch.tensor([10.0]))
    z = torch.randn(4, 2)
    assert torch.allclose(t.condition(torch.tensor([110.0]))(z), inner.condition(torch.ones(1))(z))


def test_save_load_gives_identical_scores_and_samples(fitted, tmp_path):
    path = tmp_path / "model.pt"
    fitted.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left
    loaded = DensityEstimator.load(path)
    x = gaussian(MU, COV, 100, 3)
    np.testing.assert_array_equal(loaded.score_samples(x), fitted.score_samples(x))
    np.testing.assert_array_equal(loaded.sample(7, seed=1), fitted.sample(7, seed=1))
    assert loaded.get_params() == {**fitted.get_params(), "hidden_dims": [8]}
    assert loaded.feature_names_in_ == ["a", "b"]
    assert loaded.history_ == fitted.history_
    np.testing.assert_array_equal(loaded.scale_, fitted.scale_)
    assert loaded.library_version_ == __import__("pyro_flows").__version__


def test_conditional_gaussian(tmp_path):
    # x | c ~ N(2 c + 5, 0.5^2) (plus an independent N(0, 1) column): a known conditional.
    rng = np.random.default_rng(0)
    c = rng.normal(3.0, 2.0, size=(3000, 1))
    x = np.concatenate([2 * c + 5 + 0.5 * rng.normal(size=c.shape), rng.normal(size=c.shape)], 1)
    est = DensityEstimator(
        "maf",
        num_layers=1,
        hidden_dims=(16,),
        num_steps=400,
        lr=1e-2,
        batch_size=500,
        seed=0,
        dtype="float64",
    ).fit(x[:2000], c[:2000])
    true = (
        -0.5 * ((x[2000:, 0] - 2 * c[2000:, 0] - 5) / 0.5) ** 2
        - math.log(0.5)
        - 0.5 * x[2000:, 1] ** 2
        - math.log(2 * math.pi)
    )
    assert abs(est.score(x[2000:], c[2000:]) - true.mean()) < 0.05
    assert est.sample(5, c[0]).shape == (5, 2)
    assert est.sample(5, c[:3]).shape == (5, 3, 2)
    est.save(tmp_path / "c.pt")
    loaded = DensityEstimator.load(tmp_path / "c.pt")
    np.testing.assert_array_equal(loaded.score_samples(x, c), est.score_samples(x, c))
    with pytest.raises(ValueError, match="conditional"):
        est.score_samples(x)
    assert est.log_prob(x[:4], c[:4]).requires_grad
    np.testing.assert_allclose(
        est.score_samples(x[:4], c[0]), est.score_samples(x[:4], c[[0] * 4])
    )


def test_sample_seed_leaves_global_rng(fitted):
    state = torch.get_rng_state()
    a = fitted.sample(3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a, fitted.sample(3, seed=5))


def test_sklearn_protocol(fitted):
    sklearn_base = pytest.importorskip("sklearn.base")
    clone = sklearn_base.clone(fitted)
    assert clone.get_params() == fitted.get_params()
    assert not hasattr(clone, "flow_")
    assert "num_layers=1" in repr(fitted)
    with pytest.raises(ValueError, match="unknown parameter"):
        DensityEstimator().set_params(layers=3)
    with pytest.raises(RuntimeError, match="not fitted"):
        DensityEstimator().score_samples(np.zeros((2, 2)))


@pytest.mark.parametrize(
    "x, kwargs, match",
    [
        (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 3.0]]), {}, r"X column 0 has 1 NaN"),
        (np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]), {}, r"X column 1 is constant"),
        (np.ones((5, 2)).cumsum(0), {"val_fraction": 0.1}, r"too few rows for a validation"),
        (np.zeros(5), {}, r"reshape\(-1, 1\)"),
        (np.ones((50, 2)).cumsum(0), {"flow": "naf"}, r"cannot score data"),
        (np.ones((50, 2)).cumsum(0), {"flow": "nope"}, r"unknown flow 'nope'"),
        (np.ones((50, 1)).cumsum(0), {"flow": "maf"}, r"needs at least 2 columns"),
        (np.ones((50, 2)).cumsum(0), {"patience": 2, "val_fraction": 0.0}, r"patience needs"),
    ],
)
def test_fit_errors(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DensityEstimator(num_layers=1, hidden_dims=(4,), num_steps=1, **kwargs).fit(x)


def test_fit_error_names_dataframe_column():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"height": [1.0, 2.0, 3.0], "age": [4.0, 4.0, 4.0]})
    with pytest.raises(ValueError, match="X column 'age' is constant"):
        DensityEstimator(num_steps=1, val_fraction=0).fit(df)


def _payload(path):
    return torch.load(path, weights_only=True)


def test_load_refuses_bad_files(fitted, tmp_path):
    good = tmp_path / "good.pt"
    fitted.save(good)
    data = good.read_bytes()

    with pytest.raises(FileNotFoundError, match="no such file"):
        DensityEstimator.load(tmp_path / "missing.pt")

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a pyro_flows model file, or a corrupt one"):
        DensityEstimator.load(truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(ModelFileError, match="corrupt"):
        DensityEstimator.load(garbage)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="not a pyro_flows model file"):
        DensityEstimator.load(foreign)

    future = _payload(good)
    future["format_version"] = 99
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match=r"format version 99 .* upgrade pyro_flows"):
        DensityEstimator.load(tmp_path / "future.pt")

    tampered = _payload(good)
    key = next(k for k in tampered["state_dict"] if k.endswith("scale"))
    tampered["state_dict"][key] = tampered["state_dict"][key] * 2  # units silently wrong
    torch.save(tampered, tmp_path / "tampered.pt")
    with pytest.raises(ModelFileError, match="checksum does not match"):
        DensityEstimator.load(tmp_path / "tampered.pt")

    # A self-consistent file whose settings no longer build the saved architecture.
    other = _payload(good)
    meta = json.loads(other["meta"])
    meta["params"]["hidden_dims"] = [9]
    other["meta"] = json.dumps(meta, sort_keys=True)
    other["sha256"] = density._digest(other["meta"], other["state_dict"])
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="does not match the model"):
        DensityEstimator.load(tmp_path / "other.pt")


def test_save_is_atomic(fitted, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous")

    def broken_save(obj, f):
        f.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(density.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        fitted.save(path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


# -- Gaussian-mixture base ----------------------------------------------------------------------


def _two_clusters(n, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(-3, 0.5, (n // 2, 2)), rng.normal(3, 1.0, (n - n // 2, 2))])
    return x * [10.0, 0.1] + [100.0, -3.0]


@pytest.fixture(scope="module")
def fitted_gmm():
    x, v = _two_clusters(400, 0), _two_clusters(100, 1)
    est = DensityEstimator(
        "maf",  # with a mixture base, MAF layers start at the identity
        num_layers=2,
        hidden_dims=(8,),
        num_steps=20,
        eval_every=10,
        base="gmm",
        base_components=2,
        seed=0,
        dtype="float64",
    )
    return est.fit(x, val_X=v), x, v


def test_gmm_base_starts_at_the_em_mixture_in_original_units(fitted_gmm):
    from pyro_flows.bases import fit_gaussian_mixture

    est, x, v = fitted_gmm
    mean, std = x.mean(0), x.std(0)
    w, mu, cov, _ = fit_gaussian_mixture(torch.from_numpy((x - mean) / std), 2, seed=0)
    dens = sum(
        w[k].item() * multivariate_normal(mu[k].numpy(), cov[k].numpy()).pdf((v - mean) / std)
        for k in range(2)
    )
    expected = -np.mean(np.log(dens)) + np.log(std).sum()  # NLL in the data's units
    assert est.history_.val_steps[0] == 0
    assert abs(est.history_.val_nll[0] - expected) < 1e-10
    assert est.history_.best_val_nll <= est.history_.val_nll[0]


def test_gmm_base_save_load_gives_identical_scores(fitted_gmm, tmp_path):
    est, _, v = fitted_gmm
    est.save(tmp_path / "gmm.pt")
    loaded = DensityEstimator.load(tmp_path / "gmm.pt")
    assert loaded.get_params()["base"] == "gmm" and loaded.get_params()["base_components"] == 2
    np.testing.assert_array_equal(loaded.score_samples(v), est.score_samples(v))
    np.testing.assert_array_equal(loaded.sample(5, seed=2), est.sample(5, seed=2))


def test_format_version_1_files_still_load(fitted, tmp_path):
    # A file written before learnable bases: version 1, no base settings in its params.
    old = tmp_path / "v1.pt"
    fitted.save(old)
    payload = _payload(old)
    assert payload["format_version"] == FORMAT_VERSION == 3
    meta = json.loads(payload["meta"])
    for key in ("base", "base_components", "base_covariance", "dequantize"):
        del meta["params"][key]
    del meta["lattice"], meta["selection"]
    payload["meta"] = json.dumps(meta, sort_keys=True)
    payload["format_version"] = 1
    payload["sha256"] = density._digest(payload["meta"], payload["state_dict"])
    torch.save(payload, old)
    loaded = DensityEstimator.load(old)
    assert loaded.base == "normal"
    x = gaussian(MU, COV, 50, 4)
    np.testing.assert_array_equal(loaded.score_samples(x), fitted.score_samples(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"base": "student"}, r"unknown base 'student'"),
        ({"base": "gmm", "base_components": 0}, r"base_components must be an integer >= 1"),
        ({"base_components": 3}, r"base_components=3 needs base='gmm'"),
        ({"base": "gmm", "base_covariance": "tied"}, r"unknown base_covariance 'tied'"),
        ({"base": "gmm", "base_components": 60}, r"base_components=60 needs at least"),
    ],
)
def test_base_errors(kwargs, match):
    x = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError, match=match):
        DensityEstimator("maf", num_layers=1, hidden_dims=(4,), num_steps=1, **kwargs).fit(x)


# -- tables as users pass them: DataFrames, pickles, one column, bad scales --------------------


@pytest.fixture(scope="module")
def frame_model():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    df = pd.DataFrame(
        {
            "a": rng.normal(100.0, 10.0, 400),
            "b": rng.normal(0.0, 0.1, 400),
            "c": rng.normal(size=400),
        }
    )
    est = DensityEstimator(num_layers=1, hidden_dims=(8,), num_steps=60, lr=1e-2, seed=0)
    return df, est.fit(df[["a", "b"]], df[["c"]])


def test_dataframe_columns_are_matched_by_name(frame_model):
    df, est = frame_model
    expected = est.score_samples(df[["a", "b"]], df[["c"]])
    # Reordered columns score the same rows, not other ones (by position this is ~ -2e8).
    np.testing.assert_array_equal(est.score_samples(df[["b", "a"]], df[["c"]]), expected)
    np.testing.assert_array_equal(est.log_prob(df[["b", "a"]], df[["c"]]).detach(), expected)
    assert est.score(df[["b", "a"]], df[["c"]]) == pytest.approx(expected.mean())
    # A plain array is still taken by position.
    np.testing.assert_array_equal(
        est.score_samples(df[["a", "b"]].to_numpy(), df[["c"]]), expected
    )


@pytest.mark.parametrize(
    "columns, match",
    [
        (
            {"a": "x"},
            r"X: has no column 'a' \(the model's feature_names_in_\); its columns are: x, b",
        ),
        ({"b": "c"}, r"X: has no column 'b'"),
    ],
)
def test_dataframe_with_renamed_columns_is_refused(frame_model, columns, match):
    df, est = frame_model
    with pytest.raises(ValueError, match=match):
        est.score_samples(df[["a", "b"]].rename(columns=columns), df[["c"]])


def test_dataframe_with_unknown_or_missing_context_is_refused(frame_model):
    df, est = frame_model
    with pytest.raises(ValueError, match="X: has a column 'c' that the model was not fitted on"):
        est.score_samples(df[["a", "b", "c"]], df[["c"]])
    with pytest.raises(ValueError, match="context: has no column 'c'"):
        est.score_samples(df[["a", "b"]], df[["a"]])


def test_pickle_and_clone_of_a_fitted_estimator(fitted):
    sklearn_base = pytest.importorskip("sklearn.base")
    import pickle

    x = gaussian(MU, COV, 50, 9)
    fitted.sample(5, seed=0)  # fills the layers' caches, which hold closures
    fitted.score_samples(x)
    copy = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(copy.score_samples(x), fitted.score_samples(x))
    np.testing.assert_array_equal(copy.sample(7, seed=1), fitted.sample(7, seed=1))
    assert copy.get_params() == fitted.get_params()
    assert copy.feature_names_in_ == ["a", "b"] and copy.history_ == fitted.history_
    unfitted = pickle.loads(pickle.dumps(DensityEstimator(num_layers=2)))
    assert unfitted.num_layers == 2 and not hasattr(unfitted, "flow_")
    clone = sklearn_base.clone(copy)
    assert clone.get_params() == fitted.get_params() and not hasattr(clone, "flow_")


@pytest.mark.parametrize("flow", ["spline", "planar", "radial"])
def test_one_column_fits_at_the_default_hidden_dims(flow):
    x = np.random.default_rng(4).normal(5.0, 2.0, size=(200, 1))
    est = DensityEstimator(flow, num_layers=1, num_steps=5, seed=0).fit(x)
    assert est.get_params()["hidden_dims"] is None
    assert np.isfinite(est.score_samples(x)).all()


def test_one_column_given_a_context_fits_at_the_defaults(tmp_path):
    rng = np.random.default_rng(5)
    c = rng.normal(size=(300, 2))
    x = c[:, :1] + 0.1 * rng.normal(size=(300, 1))
    est = DensityEstimator("spline", num_layers=1, num_steps=5, seed=0).fit(x, c)
    assert est.score_samples(x, c).shape == (300,)
    est.save(tmp_path / "m.pt")
    again = DensityEstimator.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(again.score_samples(x, c), est.score_samples(x, c))


def test_one_column_given_a_context_fits_a_conditional_maf():
    # flow="maf" on one column needs a context: the layer is x e^{s(c)} + mu(c)
    rng = np.random.default_rng(8)
    c = rng.normal(size=(400, 1))
    x = 2.0 * c + 0.2 * rng.normal(size=(400, 1))
    est = DensityEstimator("maf", num_layers=1, num_steps=300, seed=0).fit(x, c)
    layers = [m for m in est.flow_.modules() if isinstance(m, ConditionalMaskedAutoregressive)]
    assert [m.input_dim for m in layers] == [1]
    at = np.array([[-1.0], [1.0]])
    right = est.score_samples(np.array([[-2.0], [2.0]]), at)
    wrong = est.score_samples(np.array([[2.0], [-2.0]]), at)
    assert (right > wrong + 5).all()  # the density follows the context
    with pytest.raises(ValueError, match="needs at least 2 columns, got 1.*or give a context"):
        DensityEstimator("maf", num_steps=1).fit(x)


def test_hidden_dims_refused_by_a_family_without_networks():
    x = np.random.default_rng(4).normal(size=(50, 1))
    with pytest.raises(ValueError, match=r"'spline' has no hidden layers.*hidden_dims=None"):
        DensityEstimator("spline", hidden_dims=(8,), num_steps=1).fit(x)


def test_a_column_too_large_to_standardise_is_named():
    x = np.random.default_rng(6).normal(size=(50, 2))
    x[:, 1] *= 1e300
    with pytest.raises(ValueError, match=r"X column 1 is too large to standardise.*rescale"):
        DensityEstimator(num_steps=1, val_fraction=0).fit(x)


def test_a_discrete_looking_column_warns():
    rng = np.random.default_rng(7)
    x = np.c_[rng.normal(size=200), rng.integers(0, 3, size=200)]
    with pytest.warns(UserWarning, match=r"X column 1 holds only 3 distinct integer values"):
        DensityEstimator(num_layers=1, hidden_dims=(4,), num_steps=1).fit(x)


def test_save_into_a_missing_directory_names_it(fitted, tmp_path):
    with pytest.raises(FileNotFoundError, match="the directory .*nope.* does not exist") as e:
        fitted.save(tmp_path / "nope" / "m.pt")
    assert e.value.filename == str(tmp_path / "nope" / "m.pt")


def test_a_widened_network_warns_at_fit_not_at_load(tmp_path):
    from pyro_flows.nn import HiddenWidthWarning

    x = np.random.default_rng(0).normal(size=(200, 5))
    with pytest.warns(HiddenWidthWarning):
        est = DensityEstimator(flow="maf", hidden_dims=[3], num_layers=1, num_steps=5)
        est.fit(x)
    est.save(tmp_path / "m.pt")
    loaded = DensityEstimator.load(tmp_path / "m.pt")  # warnings are errors in the suite
    np.testing.assert_allclose(loaded.score_samples(x), est.score_samples(x))
