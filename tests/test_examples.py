import math

import pytest

TINY = [
    "--num-steps",
    "20",
    "--num-layers",
    "2",
    "--hidden",
    "8,8",
    "--num-samples",
    "1000",
    "--num-test",
    "500",
    "--batch-size",
    "128",
    "--no-progress",
]


def test_density_2d_defaults(load_example):
    args = load_example("density_2d").parse_args([])
    assert (args.dataset, args.flow, args.num_layers, args.hidden) == ("all", "maf", 5, "64,64")
    assert (args.batch_size, args.out, args.no_progress) == (512, "outputs/density_2d.png", False)
    with pytest.raises(SystemExit):
        load_example("density_2d").parse_args(["--dataset", "spiral"])


def test_density_2d(load_example, tmp_path, capsys):
    example = load_example("density_2d")
    out = tmp_path / "sub" / "density.png"
    results = example.main(example.parse_args([*TINY, "--out", str(out)]))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = ["8gaussians", "checkerboard"]
    assert list(results) == names
    for r in results.values():
        assert all(math.isfinite(r[k]) for k in ("test_nll", "kl", "kl_se", "entropy"))
        # KL(p || q) = cross-entropy - entropy, both estimated on the same test rows
        assert r["kl"] > -3 * r["kl_se"]
    printed = capsys.readouterr().out
    assert all(name in printed for name in names) and "KL" in printed
