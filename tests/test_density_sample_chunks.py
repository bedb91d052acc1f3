"""DensityEstimator.sample draws in chunks: same shapes, seeded, and every chunk fresh."""

import numpy as np
import pytest

import pyro_flows.density as density
from pyro_flows.density import DensityEstimator


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(density, "_SAMPLE_CHUNK", 7)


def _fit(context: bool):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2)) * [1.0, 3.0] + [5.0, -2.0]
    c = rng.normal(size=(300, 1)) if context else None
    est = DensityEstimator(flow="maf", num_layers=1, num_steps=30, seed=0)
    return est.fit(x, context=c) if context else est.fit(x)


def test_unconditional_sample_in_chunks(small_chunks):
    est = _fit(context=False)
    a = est.sample(20, seed=3)
    assert a.shape == (20, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, est.sample(20, seed=3))  # seeded across chunks
    assert len(np.unique(a[:, 0])) == 20  # no chunk repeats another's draws
    assert abs(est.sample(2000, seed=1)[:, 0].mean() - 5.0) < 1.0  # in the data's units


def test_conditional_sample_in_chunks(small_chunks):
    est = _fit(context=True)
    out = est.sample(16, context=np.zeros((3, 1)), seed=0)
    assert out.shape == (16, 3, 2) and np.isfinite(out).all()
    assert est.sample(9, context=np.zeros(1), seed=0).shape == (9, 2)


def test_a_large_draw_reports_its_chunks(small_chunks, capsys):
    est = _fit(context=False)
    est.progress = True
    est.sample(20, seed=0)
    err = capsys.readouterr().err
    assert "sample" in err and "3/3" in err  # 20 rows in chunks of 7
    est.sample(5, seed=0)
    assert "sample" not in capsys.readouterr().err  # one chunk: no bar
