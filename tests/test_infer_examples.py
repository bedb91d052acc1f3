"""Each inference example runs end to end with tiny settings and writes its PNG."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

PNG = b"\x89PNG\r\n\x1a\n"
# Two guides keep it quick; the defaults compare five.
TINY = ["--num-steps", "5", "--num-samples", "200", "--no-progress", "--num-particles", "2"]
GUIDES = ["--guides", "AutoNormal,flow:iaf", "--num-layers", "1", "--hidden", "32"]


@pytest.fixture(autouse=True)
def _keep_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def _run(load_example, name, tmp_path, *extra):
    example = load_example(name)
    out = tmp_path / f"{name}.png"
    results = example.main(example.parse_args([*extra, "--out", str(out)]))
    assert out.read_bytes()[:8] == PNG
    return results


@pytest.mark.parametrize("name", ["vi_funnel", "vi_banana", "vi_logistic_regression"])
def test_comparison_examples(load_example, name, tmp_path, capsys):
    results = _run(load_example, name, tmp_path, *TINY, *GUIDES)
    assert list(results) == ["AutoNormal", "flow:iaf"]
    for row in results.values():
        assert math.isfinite(row["elbo"]) and math.isfinite(row["seconds"])
        assert not math.isnan(row["pareto_k"])
    printed = capsys.readouterr().out
    assert "k-hat" in printed and "flow:iaf" in printed


def test_eight_schools_with_and_without_reference(load_example, tmp_path, capsys):
    results = _run(
        load_example, "vi_eight_schools", tmp_path, *TINY, *GUIDES, "--data-dir", str(tmp_path)
    )
    assert "skipped" in capsys.readouterr().out
    assert set(results["flow:iaf"]) == {"elbo", "pareto_k", "seconds"}
    example = load_example("vi_eight_schools")
    if example.load_reference(example.parse_args([]).data_dir) is None:
        pytest.skip("posteriordb reference draws not found")
    results = _run(load_example, "vi_eight_schools", tmp_path, *TINY, *GUIDES, "--centered")
    assert {"mean", "sd"} <= set(results["flow:iaf"])


def test_flow_prior_example(load_example, tmp_path, capsys):
    tiny = ["--num-steps", "5", "--fit-steps", "5", "--num-samples", "200", "--no-progress"]
    results = _run(
        load_example, "vi_flow_prior", tmp_path, *tiny, "--num-layers", "1", "--hidden", "8"
    )
    assert all(math.isfinite(v) for v in results.values())
    assert "sequential vs exact" in capsys.readouterr().out


def test_examples_defaults(load_example):
    args = load_example("vi_funnel").parse_args([])
    assert (args.dim, args.num_steps, args.num_samples) == (10, 2000, 10_000)
    assert args.guides.split(",") == [
        "AutoNormal",
        "AutoMultivariateNormal",
        "AutoIAFNormal",
        "flow:iaf",
        "flow:maf",
    ]
    with pytest.raises(ValueError, match="unknown guides"):
        load_example("vi_banana").main(
            load_example("vi_banana").parse_args(["--guides", "AutoMagic"])
        )


def test_vi_benchmark_skips_cleanly_without_data(tmp_path, capsys, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "vi_guides.py"
    spec = importlib.util.spec_from_file_location("vi_guides", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vi_guides", bench)  # its dataclass looks itself up
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--section", "posteriordb", "--data-dir", str(tmp_path)])
    bench.run_posteriordb(args)
    assert "section skipped" in capsys.readouterr().out
