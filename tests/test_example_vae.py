import math

import pytest


def test_cvae_digits_defaults(load_example):
    args = load_example("cvae_digits").parse_args([])
    assert (args.num_samples, args.net, args.out) == (1000, "mlp", "outputs/cvae_digits.png")
    assert args.num_samples >= 100
    with pytest.raises(SystemExit):
        load_example("cvae_digits").parse_args(["--net", "resnet"])


def test_cvae_digits_tiny(load_example, tmp_path, capsys):
    example = load_example("cvae_digits")
    out = tmp_path / "sub" / "digits.png"
    argv = ["--num-steps", "3", "--hidden", "16", "--flow-hidden", "8", "--num-layers", "1"]
    argv += ["--num-samples", "100", "--elbo-samples", "2", "--test-size", "0.05"]
    results = example.main(example.parse_args([*argv, "--no-progress", "--out", str(out)]))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(results) == list(example.VARIANTS)
    for r in results.values():
        assert all(math.isfinite(v) for pair in (r["elbo"], r["iwae"], r["margin"]) for v in pair)
        assert r["iwae"][0] >= r["elbo"][0] - 1.0  # K = 100 vs 2 draws, both estimated
    assert results["Gaussian posterior"]["margin"] == (0.0, 0.0)
    printed = capsys.readouterr().out
    assert "test IWAE bound" in printed and "flow posterior + flow prior" in printed


def test_pivae_poisson_tiny(load_example, tmp_path, capsys):
    example = load_example("pivae_poisson")
    out = tmp_path / "pivae.png"
    argv = ["--num-steps", "3", "--hidden", "8", "--num-train", "40", "--num-test", "50"]
    argv += ["--num-synthetic", "20", "--batch-size", "10", "--num-points", "9"]
    argv += ["--num-u", "2", "--num-f", "5", "--no-progress", "--out", str(out)]
    results = example.main(example.parse_args(argv))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(results) == 3
    assert results["true fields"]["residual"] < 1e-8  # the data solve the discrete equation
    for r in results.values():
        assert all(math.isfinite(v) for v in r.values())
    assert "residual lowered" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        example.parse_args(["--decoder", "fno"])
