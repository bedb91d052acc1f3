import argparse

import pytest


@pytest.mark.slow  # ~20 s of CPU: two fits, two C2STs, coverage with FMPE's ODE densities
@pytest.mark.filterwarnings("ignore::UserWarning")  # matplotlib's tight_layout on tiny figures
def test_sbi_two_moons_example_runs(load_example, tmp_path):
    example = load_example("sbi_two_moons")
    args = example.parse_args(
        [
            "--num-simulations",
            "300",
            "--num-steps",
            "10",
            "--num-sbc",
            "20",
            "--num-posterior",
            "100",
            "--outdir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert isinstance(args, argparse.Namespace)
    results = example.main(args)
    assert set(results) == {"NPE", "FMPE"}
    for r in results.values():
        assert 0.4 <= r["c2st"] <= 1.0 and r["outside_prior"] == 0.0
    for name in ("sbi_pairplot.png", "sbi_coverage.png", "sbi_ranks.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_reference_posterior_sits_on_the_moons(load_example):
    import torch

    example = load_example("sbi_two_moons")
    draws = example.reference_posterior(torch.zeros(2), 500, grid=100)
    # x_o = 0: |theta1 + theta2| / sqrt 2 ~ 0.25 +- 0.1 and theta2 - theta1 within +- 0.1 * sqrt 2
    s = (draws[:, 0] + draws[:, 1]).abs() / 2**0.5
    assert ((s > 0.13) & (s < 0.37)).float().mean() > 0.95
