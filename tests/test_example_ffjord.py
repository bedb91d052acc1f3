import math

import pytest

TINY = [
    "--num-steps",
    "3",
    "--hidden",
    "8",
    "--num-samples",
    "200",
    "--num-test",
    "100",
    "--batch-size",
    "64",
    "--grid",
    "16",
    "--num-paths",
    "4",
    "--rtol",
    "1e-3",
    "--atol",
    "1e-3",
    "--no-progress",
]


def test_ffjord_2d_defaults(load_example):
    example = load_example("ffjord_2d")
    args = example.parse_args([])
    assert (args.dataset, args.hidden, args.out) == ("all", "64,64,64", "outputs/ffjord_2d.png")
    with pytest.raises(SystemExit):
        example.parse_args(["--dataset", "spiral"])


def test_ffjord_2d(load_example, tmp_path, capsys):
    example = load_example("ffjord_2d")
    out = tmp_path / "sub" / "ffjord.png"
    results = example.main(example.parse_args([*TINY, "--out", str(out)]))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(results) == ["8gaussians", "checkerboard"]
    for r in results.values():
        assert all(math.isfinite(r[k]) for k in ("test_nll", "kl", "kl_se", "seconds_per_step"))
        assert r["eval_nfe"] > 0
    printed = capsys.readouterr().out
    assert "KL" in printed and "NFE" in printed


def test_trajectories_end_where_the_flow_maps(load_example):
    import torch

    from pyro_flows.transforms import ffjord

    example = load_example("ffjord_2d")
    layer = ffjord(2, hidden_dims=[8], rtol=1e-7, atol=1e-7)
    z0 = torch.randn(5, 2)
    path = example.trajectories(layer, z0, num_times=5)
    assert path.shape == (5, 5, 2)
    assert torch.allclose(path[-1], layer(z0).detach(), atol=1e-4)
