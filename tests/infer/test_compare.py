"""compare_guides, format_table, pair_plot and guides_from_labels on a tiny model."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_flows.infer import compare_guides, format_table, guides_from_labels, pair_plot


def model():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    pyro.sample("b", dist.Normal(a, 0.5))


def broken_model():
    model()
    pyro.factor("boom", torch.tensor(float("inf")))


def test_compare_table_and_plot(tmp_path):
    guides = guides_from_labels("AutoNormal,flow:realnvp", num_layers=1, hidden_dims=[8])
    reports = compare_guides(model, guides, num_steps=5, num_samples=200)
    assert list(reports) == ["AutoNormal", "flow:realnvp"]
    r = reports["flow:realnvp"]
    assert r.draws.num_samples == 200 and len(r.losses) == 5 and r.ms_per_step > 0
    assert r.reading in ("good", "ok", "bad")
    table = format_table(reports, log_z=0.0, extra={"x": {"AutoNormal": 1.0}})
    assert "gap" in table and "flow:realnvp" in table and "nan" in table
    out = pair_plot(reports, ["a", "b"], tmp_path / "pairs.png", title="t", limits=((-3, 3),) * 2)
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.filterwarnings("ignore:Encountered \\+inf")
def test_divergent_guides_are_recorded_or_raised():
    guides = guides_from_labels(["AutoNormal"])
    failures = {}
    assert compare_guides(broken_model, guides, num_steps=3, failures=failures) == {}
    assert failures["AutoNormal"].startswith("diverged") and "step 1" in failures["AutoNormal"]
    with pytest.raises(FloatingPointError, match="step 1"):
        compare_guides(broken_model, guides, num_steps=3)
    with pytest.raises(ValueError, match="unknown guides"):
        guides_from_labels("AutoDelta")
