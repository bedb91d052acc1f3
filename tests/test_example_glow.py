import math

import pytest
import torch

from pyro_flows.datasets import load_digits, load_mnist

TINY = [
    "--num-steps",
    "3",
    "--batch-size",
    "16",
    "--steps-per-level",
    "1",
    "--hidden",
    "8",
    "--deq-steps",
    "1",
    "--deq-hidden",
    "4",
    "--realnvp-layers",
    "2",
    "--realnvp-hidden",
    "8",
    "--iw-samples",
    "2",
    "--num-samples",
    "3",
    "--no-progress",
]


def test_glow_digits_defaults(load_example):
    args = load_example("glow_digits").parse_args([])
    assert (args.num_steps, args.levels, args.steps_per_level) == (3000, 2, 4)
    assert (args.out, args.iw_samples, args.threads) == ("outputs/glow_digits.png", 64, 1)


def test_glow_digits(load_example, tmp_path, capsys):
    example = load_example("glow_digits")
    out = tmp_path / "sub" / "glow.png"
    results = example.main(example.parse_args([*TINY, "--out", str(out)]))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(results) == [
        "per-pixel categorical",
        "RealNVP",
        "Glow + uniform",
        "Glow + variational",
        "Glow + variational, p(x | label)",
    ]
    for r in results.values():
        assert math.isfinite(r["bound"]) and math.isfinite(r["iw"])
        assert r["iw"] <= r["bound"] + 1e-9  # the IW estimate is never looser (same draws)
    # a model that knows nothing pays log2(17) = 4.09 bits/dim; the smoothed counts far less
    assert 2.0 < results["per-pixel categorical"]["bound"] < 3.0
    printed = capsys.readouterr().out
    assert "bits/dim" in printed and "| Glow + variational |" in printed


def test_categorical_baseline_of_uniform_data_is_log2_levels(load_example):
    example = load_example("glow_digits")
    levels = 5
    x = torch.arange(levels).repeat(200).reshape(-1, 1, 1, 2).float()  # every level equally
    bpd = example.categorical_baseline(x, x, levels)
    assert math.isclose(bpd, math.log2(levels), rel_tol=1e-3)


def test_digits_split_is_seeded_and_disjoint():
    a, b = load_digits(seed=3), load_digits(seed=3)
    assert torch.equal(a.test_x, b.test_x) and a.levels == 17
    assert len(a.train_x) + len(a.test_x) == 1797
    assert not torch.equal(load_digits(seed=4).test_x, a.test_x)
    assert set(a.train_y.unique().tolist()) == set(range(10))
    with pytest.raises(ValueError, match="num_test"):
        load_digits(num_test=0)


def test_mnist_loader_skips_cleanly_when_absent(tmp_path):
    assert load_mnist(tmp_path) is None
