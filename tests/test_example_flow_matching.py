import math

import pytest

TINY_2D = [
    "--ffjord-steps", "2",
    "--fm-steps", "5",
    "--hidden", "8",
    "--num-samples", "200",
    "--num-test", "100",
    "--grid", "12",
    "--num-paths", "3",
    "--rtol", "1e-3",
    "--no-progress",
]  # fmt: skip

TINY_PRIOR = [
    "--num-draws", "300",
    "--fm-steps", "5",
    "--hidden", "8",
    "--ode-steps", "2",
    "--warmup", "3",
    "--num-samples", "5",
    "--svi-steps", "3",
    "--grid", "20",
    "--no-progress",
]  # fmt: skip


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flow_matching_2d(load_example, tmp_path, capsys):
    example = load_example("flow_matching_2d")
    assert example.parse_args([]).out == "outputs/flow_matching_2d.png"
    with pytest.raises(SystemExit):
        example.parse_args(["--dataset", "spiral"])
    out = tmp_path / "fm.png"
    results = example.main(
        example.parse_args([*TINY_2D, "--dataset", "8gaussians", "--out", str(out)])
    )
    assert _is_png(out)
    assert list(results["8gaussians"]) == ["ffjord", "fm_independent", "fm_ot"]
    for r in results["8gaussians"].values():
        assert math.isfinite(r["test_nll"]) and math.isfinite(r["kl"]) and r["sample_nfe"] > 0
    assert "FM OT" in capsys.readouterr().out


@pytest.mark.parametrize("inference", ["nuts", "svi"])
def test_flow_matching_prior(load_example, tmp_path, inference):
    example = load_example("flow_matching_prior")
    out = tmp_path / "prior.png"
    result = example.main(
        example.parse_args([*TINY_PRIOR, "--inference", inference, "--out", str(out)])
    )
    assert _is_png(out)
    assert len(result["posterior_mean"]) == 2 and math.isfinite(result["prior_kl"])
    assert all(s > 0 for s in result["exact_sd"])
