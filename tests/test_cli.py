import csv
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_flows.cli import main
from pyro_flows.density import DensityEstimator

TINY = ["--layers", "1", "--hidden", "8", "--steps", "30", "--batch-size", "64", "--no-progress"]
PNG = b"\x89PNG\r\n\x1a\n"


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=float)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 3-column CSV with a header (a, b depend on c; c is a context) and a text column."""
    rng = np.random.default_rng(0)
    c = rng.normal(size=300)
    a = 2 * c + 0.5 * rng.normal(size=300)
    b = 100 + 10 * rng.normal(size=300)
    rows = [[f"{a[i]:.6f}", f"{b[i]:.6f}", f"{c[i]:.6f}", f"id{i}"] for i in range(300)]
    return write_csv(tmp_path_factory.mktemp("data") / "data.csv", ["a", "b", "c", "name"], rows)


@pytest.fixture(scope="module")
def model(data):
    out = data.parent / "model.pt"
    assert main(["fit", str(data), "--columns", "a,b", "--out", str(out), *TINY]) == 0
    return out


def test_help_on_every_command(capsys):
    for command in ([], ["fit"], ["sample"], ["score"], ["plot"]):
        assert main([*command, "--help"]) == 0
        assert "usage: pyro-flows" in capsys.readouterr().out
    assert main([]) == 2  # a command is required
    assert "COMMAND" in capsys.readouterr().err


def test_python_dash_m(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pyro-flows", "--version"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("pyro_flows", run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("pyro-flows ")


def test_end_to_end(data, model, tmp_path, capsys):
    capsys.readouterr()
    logp = tmp_path / "logp.csv"
    assert main(["score", str(model), str(data), "--out", str(logp)]) == 0
    summary = capsys.readouterr().out
    assert "300 rows, mean NLL" in summary and "±" in summary
    header, values = read_csv(logp)
    assert header == ["log_prob"] and values.shape == (300, 1)
    assert np.isfinite(values).all()
    nll = float(summary.split("mean NLL ")[1].split()[0])
    assert abs(nll + values.mean()) < 1e-3

    # The reloaded model gives identical scores (to the 10 digits written).
    x = np.genfromtxt(data, delimiter=",", skip_header=1, usecols=(0, 1))
    scores = DensityEstimator.load(model).score_samples(x)
    np.testing.assert_allclose(values[:, 0], scores, rtol=1e-9)
    assert main(["score", str(model), str(data), "--out", str(tmp_path / "again.csv")]) == 0
    assert (tmp_path / "again.csv").read_bytes() == logp.read_bytes()

    samples = tmp_path / "samples.csv"
    assert main(["sample", str(model), "-n", "50", "--out", str(samples)]) == 0
    header, values = read_csv(samples)
    assert header == ["a", "b"] and values.shape == (50, 2) and np.isfinite(values).all()
    assert abs(values[:, 1].mean() - 100) < 10  # samples are in the data's units

    fig = tmp_path / "fig.png"
    assert main(["plot", str(model), str(data), "--out", str(fig), "-n", "100"]) == 0
    assert fig.read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "again.csv",
        "fig.png",
        "logp.csv",
        "samples.csv",
    ]


def test_conditional_fit(data, tmp_path, capsys):
    out = tmp_path / "cond.pt"
    assert (
        main(["fit", str(data), "--columns", "a,b", "--context", "c", "--out", str(out), *TINY])
        == 0
    )
    est = DensityEstimator.load(out)
    assert (est.feature_names_in_, est.context_names_in_) == (["a", "b"], ["c"])
    capsys.readouterr()
    assert main(["score", str(out), str(data)]) == 0  # context columns found by name
    assert "mean NLL" in capsys.readouterr().out

    at = tmp_path / "at.csv"
    assert main(["sample", str(out), "-n", "20", "--context", "1.5", "--out", str(at)]) == 0
    header, values = read_csv(at)
    assert header == ["a", "b", "c"] and values.shape == (20, 3)
    assert (values[:, 2] == 1.5).all()

    rows = tmp_path / "rows.npy"
    assert main(["sample", str(out), "--context-data", str(data), "--out", str(rows)]) == 0
    values = np.load(rows)
    assert values.shape == (300, 3)
    np.testing.assert_allclose(
        values[:, 2], np.genfromtxt(data, delimiter=",", skip_header=1, usecols=2), atol=1e-6
    )
    capsys.readouterr()
    assert main(["plot", str(out), str(data), "--out", str(tmp_path / "c.png")]) == 0
    assert "against 2100 model samples" in capsys.readouterr().out  # 7 at each of 300 rows
    # the context is drawn too, and can be chosen like the data columns
    argv = ["plot", str(out), str(data), "--out", str(tmp_path / "c.png"), "--columns", "a,c"]
    assert main(argv) == 0
    assert "(2 of 3 columns)" in capsys.readouterr().out

    capsys.readouterr()
    assert main(["sample", str(out), "--out", str(tmp_path / "x.csv")]) == 1
    assert "conditional on (c)" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_headerless_csv_npy_npz(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    plain = write_csv(tmp_path / "plain.csv", None, x.tolist())
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", first=x, other=x[:, :2])

    out = tmp_path / "plain.pt"
    assert (
        main(["fit", str(plain), "--columns", "0,2", "--context", "1", "--out", str(out), *TINY])
        == 0
    )
    est = DensityEstimator.load(out)
    assert (est.feature_names_in_, est.context_names_in_) == (["0", "2"], ["1"])
    capsys.readouterr()
    assert main(["score", str(out), str(plain)]) == 0  # columns found by position
    csv_summary = capsys.readouterr().out
    assert main(["score", str(out), str(tmp_path / "x.npy")]) == 0
    npy_summary = capsys.readouterr().out
    assert csv_summary.split(":", 1)[1] == npy_summary.split(":", 1)[1]
    rows = tmp_path / "rows.csv"
    assert main(["sample", str(out), "--context-data", str(plain), "--out", str(rows)]) == 0
    header, values = read_csv(rows)
    assert header == ["0", "2", "1"] and values.shape == (200, 3)
    np.testing.assert_allclose(values[:, 2], x[:, 1], rtol=1e-8)

    assert (
        main(
            [
                "fit",
                str(tmp_path / "x.npz"),
                "--key",
                "other",
                "--out",
                str(tmp_path / "z.pt"),
                *TINY,
            ]
        )
        == 0
    )
    assert DensityEstimator.load(tmp_path / "z.pt").n_features_in_ == 2


def test_installed_console_script(data, model, tmp_path):
    script = shutil.which(
        "pyro-flows",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    assert script is not None, (
        "the pyro-flows console script is not installed: run `pip install -e .` "
        "(or FORCE=1 bash .ci/setup)"
    )
    out = tmp_path / "logp.npy"
    run = subprocess.run(
        [script, "score", str(model), str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "mean NLL" in run.stdout
    x = np.genfromtxt(data, delimiter=",", skip_header=1, usecols=(0, 1))
    np.testing.assert_array_equal(np.load(out), DensityEstimator.load(model).score_samples(x))


# -- bad input: a clear message naming the file, column or option; a non-zero exit; no output.


@pytest.fixture
def bad(tmp_path):
    """Writes small bad-input files into tmp_path; returns a helper making CSVs there."""

    def make(name, header, rows):
        return str(write_csv(tmp_path / name, header, rows))

    return make


def good_rows(n=40):
    rng = np.random.default_rng(2)
    return rng.normal(size=(n, 3)).round(4).tolist()


CASES = {
    "missing file": (lambda bad: ["fit", "nope.csv"], ["nope.csv: no such file"], 1),
    "non-numeric column": (
        lambda bad: [
            "fit",
            bad("t.csv", ["a", "b", "c"], good_rows()[:3] + [[1, "abc", 2]] + good_rows()[3:]),
        ],
        ["t.csv: column 'b' is not numeric: line 5 holds 'abc'"],
        1,
    ),
    "empty value": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], [[1, "", 2]] + good_rows())],
        ["column 'b' is not numeric: line 2 holds an empty value"],
        1,
    ),
    "NaN value": (
        lambda bad: [
            "fit",
            bad("t.csv", ["a", "b", "c"], good_rows()[:6] + [[1, 2, "nan"]] + good_rows()[6:]),
        ],
        ["t.csv: column 'c' has 1 NaN or infinite value(s), the first on line 8"],
        1,
    ),
    "inf value, no header": (
        lambda bad: ["fit", bad("t.csv", None, good_rows() + [["-inf", 1, 2]])],
        ["t.csv: column 0 has 1 NaN or infinite value(s), the first on line 41"],
        1,
    ),
    "constant column": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "k"], [r[:2] + [7] for r in good_rows()])],
        ["t.csv: column 'k' is constant (every value is 7)", "--columns"],
        1,
    ),
    "too few rows for validation": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows(5))],
        [
            "t.csv: too few rows for a validation split: --val-fraction 0.1 of 5 rows",
            "at least 10 rows, or --val-fraction 0",
        ],
        1,
    ),
    "missing context column": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--context", "zz"],
        ["t.csv: has no column 'zz' (--context); its columns are: a, b, c"],
        1,
    ),
    "context index out of range": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--context", "7"],
        ["--context index 7 is out of range"],
        1,
    ),
    "missing data column": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--columns", "a,q"],
        ["has no column 'q' (--columns)"],
        1,
    ),
    "column in data and context": (
        lambda bad: [
            "fit",
            bad("t.csv", ["a", "b", "c"], good_rows()),
            "--columns",
            "a,b",
            "--context",
            "b",
        ],
        ["column 'b' is in both --columns and --context"],
        1,
    ),
    "ragged csv": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows() + [[1, 2]])],
        ["t.csv: line 42 has 2 fields, but line 1 has 3", "--delimiter"],
        1,
    ),
    "unsupported file type": (
        lambda bad: ["fit", bad("t.txt", ["a"], [[1]])],
        ["t.txt: unsupported file type '.txt'; use one of .csv, .npy, .npz"],
        1,
    ),
    "one column for maf": (
        lambda bad: [
            "fit",
            bad("t.csv", ["a", "b", "c"], good_rows()),
            "--columns",
            "a",
            "--flow",
            "maf",
        ],
        ["--flow maf needs at least 2 columns, got 1; for one column use --flow spline"],
        1,
    ),
    "flow without conditional variant": (
        lambda bad: [
            "fit",
            bad("t.csv", ["a", "b", "c"], good_rows()),
            "--context",
            "c",
            "--flow",
            "spline_coupling",
        ],
        ["--flow spline_coupling has no conditional variant, so it cannot take --context"],
        1,
    ),
    "patience without validation": (
        lambda bad: [
            "fit",
            bad("t.csv", ["a", "b", "c"], good_rows()),
            "--patience",
            "3",
            "--val-fraction",
            "0",
        ],
        ["--patience needs validation rows: set --val-fraction > 0"],
        1,
    ),
    "output directory missing": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--out", "no/dir/m.pt"],
        ["--out no/dir/m.pt: the directory 'no/dir' does not exist"],
        1,
    ),
    "bad --hidden": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--hidden", "64,x"],
        ["argument --hidden: expected positive integers"],
        2,
    ),
    "bad --val-fraction": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--val-fraction", "1.5"],
        ["argument --val-fraction: expected a number in [0, 1)"],
        2,
    ),
    "base components without gmm base": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--base-components", "2"],
        ["--base-components 2 needs --base gmm"],
        1,
    ),
    "too many base components": (
        lambda bad: [
            "fit",
            bad("t.csv", ["a", "b", "c"], good_rows()),
            "--base",
            "gmm",
            "--base-components",
            "500",
        ],
        ["--base-components 500 needs at least 500 training rows"],
        1,
    ),
    "unknown base": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--base", "student"],
        ["argument --base: invalid choice: 'student'"],
        2,
    ),
    "residual for a family without it": (
        lambda bad: [
            "fit",
            bad("t.csv", ["a", "b", "c"], good_rows()),
            "--flow",
            "planar",
            "--residual",
        ],
        ["--residual is not an option of --flow planar; it is one of affine_coupling, iaf, maf"],
        1,
    ),
    "residual with one hidden layer": (
        # TINY's --hidden 8 comes last and wins.
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--residual"],
        ["--residual needs at least two hidden layers of one width", "got [8]"],
        1,
    ),
    "hidden sizes for a family without networks": (
        # TINY's --hidden 8 applies to the spline chosen for one column.
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--columns", "a"],
        ["--flow spline has no hidden layers, so it takes no --hidden", "leave out --hidden"],
        1,
    ),
    "unknown flow": (
        lambda bad: ["fit", bad("t.csv", ["a", "b", "c"], good_rows()), "--flow", "naf"],
        ["argument --flow: invalid choice: 'naf'"],
        2,
    ),
}


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_bad_input(case, bad, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_argv, messages, code = CASES[case]
    argv = make_argv(bad)
    if "--out" not in argv:
        argv += ["--out", "m.pt"]
    before = set(os.listdir(tmp_path))
    assert main([*argv, *TINY]) == code
    err = capsys.readouterr().err
    for message in messages:
        assert message in err, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pyro-flows fit: error: ") and messages[0] in last, err
    if code == 1:
        assert len(err.strip().splitlines()) == 1, err  # one line, no usage or traceback
    assert set(os.listdir(tmp_path)) == before  # nothing written, not even a temporary file


def test_bad_npz_key(tmp_path, capsys):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros((5, 2)), b=np.zeros((5, 2)))
    assert main(["fit", str(path), "--out", str(tmp_path / "m.pt")]) == 1
    assert "holds several arrays (a, b); choose one with --key" in capsys.readouterr().err
    assert main(["fit", str(path), "--key", "c", "--out", str(tmp_path / "m.pt")]) == 1
    assert "has no array 'c' (--key); its arrays are: a, b" in capsys.readouterr().err


def test_bad_model_files(data, model, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "logp.csv"
    assert main(["score", str(tmp_path / "none.pt"), str(data), "--out", str(out)]) == 1
    assert "none.pt: no such file (MODEL)" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model.read_bytes()[:-500])
    assert main(["score", str(corrupt), str(data), "--out", str(out)]) == 1
    assert "corrupt.pt: not a pyro_flows model file, or a corrupt one" in capsys.readouterr().err

    old = torch.load(model, weights_only=True)
    old["format_version"] = 0
    torch.save(old, tmp_path / "old.pt")
    assert main(["sample", str(tmp_path / "old.pt"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "old.pt: model file format version 0" in err and "refit" in err
    assert not out.exists()

    # The model's columns are looked up by name; a file without them is refused.
    other = write_csv(tmp_path / "other.csv", ["x", "y"], [[1, 2], [3, 4]])
    assert main(["score", str(model), str(other)]) == 1
    assert "other.csv: has no column 'a'" in capsys.readouterr().err


def test_gmm_base_round_trips(data, tmp_path, capsys):
    out = tmp_path / "gmm.pt"
    argv = ["fit", str(data), "--columns", "a,b", "--out", str(out), *TINY]
    assert (
        main([*argv, "--base", "gmm", "--base-components", "3", "--base-covariance", "diag"]) == 0
    )
    assert "on a 3-component Gaussian-mixture base" in capsys.readouterr().out
    est = DensityEstimator.load(out)
    params = est.get_params()
    assert (params["base"], params["base_components"], params["base_covariance"]) == (
        "gmm",
        3,
        "diag",
    )
    assert est.flow_.base.num_components == 3 and est.flow_.base.covariance == "diag"
    capsys.readouterr()
    logp = tmp_path / "logp.csv"
    assert main(["score", str(out), str(data), "--out", str(logp)]) == 0
    x = np.genfromtxt(data, delimiter=",", skip_header=1, usecols=(0, 1))
    np.testing.assert_allclose(read_csv(logp)[1][:, 0], est.score_samples(x), rtol=1e-9)
    assert main(["sample", str(out), "-n", "20", "--out", str(tmp_path / "s.csv")]) == 0
    assert read_csv(tmp_path / "s.csv")[1].shape == (20, 2)


def test_residual_networks_round_trip(data, tmp_path, capsys):
    out = tmp_path / "res.pt"
    argv = ["fit", str(data), "--columns", "a,b", "--out", str(out), *TINY]
    assert main([*argv, "--hidden", "8,8,8", "--residual"]) == 0
    est = DensityEstimator.load(out)
    assert est.get_params()["flow_kwargs"] == {"residual": True}
    nets = [m for m in est.flow_.modules() if hasattr(m, "residual")]
    assert nets and all(net.residual for net in nets)
    capsys.readouterr()
    logp = tmp_path / "logp.csv"
    assert main(["score", str(out), str(data), "--out", str(logp)]) == 0
    x = np.genfromtxt(data, delimiter=",", skip_header=1, usecols=(0, 1))
    np.testing.assert_allclose(read_csv(logp)[1][:, 0], est.score_samples(x), rtol=1e-9)


# -- outputs never replace inputs; one column fits at the defaults; corrupt numpy files ------

QUICK = ["--layers", "1", "--steps", "20", "--batch-size", "64", "--no-progress"]


def test_out_may_not_be_an_input(data, model, tmp_path, capsys):
    table = tmp_path / "data.csv"
    shutil.copy(data, table)
    link = tmp_path / "link.csv"
    link.symlink_to(table)
    hard = tmp_path / "hard.csv"
    os.link(table, hard)
    saved_model = tmp_path / "m.pt"
    shutil.copy(model, saved_model)
    before = {p: p.read_bytes() for p in (table, saved_model)}
    cases = [
        (["fit", str(table), "--out", str(table), *TINY], "(DATA)"),
        (["fit", str(table), "--out", str(link), *TINY], "(DATA)"),
        (["fit", str(link), "--out", str(hard), *TINY], "(DATA)"),
        (["score", str(saved_model), str(table), "--out", str(table)], "(DATA)"),
        (["score", str(saved_model), str(table), "--out", str(link)], "(DATA)"),
        (["score", str(saved_model), str(table), "--out", str(saved_model)], "(MODEL)"),
        (["sample", str(saved_model), "--out", str(saved_model)], "(MODEL)"),
        (["plot", str(saved_model), str(table), "--out", str(table)], "(DATA)"),
    ]
    for argv, what in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert "is the input file" in err and what in err, (argv, err)
        assert "choose another output path" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in before} == before

    cond = tmp_path / "cond.pt"
    argv = ["fit", str(table), "--columns", "a,b", "--context", "c", "--out", str(cond)]
    assert main([*argv, *TINY]) == 0
    ctx = tmp_path / "ctx.csv"
    write_csv(ctx, ["c"], [[0.5], [1.0]])
    assert main(["sample", str(cond), "--context-data", str(ctx), "--out", str(ctx)]) == 1
    assert "is the input file" in capsys.readouterr().err
    assert read_csv(ctx)[1].shape == (2, 1)


def test_one_column_fits_with_the_default_command(data, tmp_path, capsys):
    out = tmp_path / "one.pt"
    assert main(["fit", str(data), "--columns", "b", "--out", str(out), *QUICK]) == 0
    assert "fitted spline (1 layers)" in capsys.readouterr().out
    est = DensityEstimator.load(out)
    assert (est.flow, est.hidden_dims, est.feature_names_in_) == ("spline", None, ["b"])
    assert main(["score", str(out), str(data)]) == 0
    assert main(["sample", str(out), "-n", "5", "--out", str(tmp_path / "s.csv")]) == 0
    assert read_csv(tmp_path / "s.csv")[1].shape == (5, 1)
    for flow in ("planar", "radial"):
        argv = ["fit", str(data), "--columns", "b", "--flow", flow, "--out", str(out), *QUICK]
        assert main(argv) == 0, capsys.readouterr().err


def test_one_column_given_context_fits_with_the_default_command(data, tmp_path, capsys):
    out = tmp_path / "cond1.pt"
    argv = ["fit", str(data), "--columns", "a", "--context", "c", "--out", str(out), *QUICK]
    assert main(argv) == 0, capsys.readouterr().err
    # MAF of one column given a context: an affine map whose shift and scale see the context
    assert "fitted maf (1 layers, hidden 64,64)" in capsys.readouterr().out
    est = DensityEstimator.load(out)
    assert (est.flow, est.n_features_in_, est.context_names_in_) == ("maf", 1, ["c"])
    assert main(["score", str(out), str(data)]) == 0
    assert "mean NLL" in capsys.readouterr().out
    at = tmp_path / "at.csv"
    assert main(["sample", str(out), "-n", "4", "--context", "0.5", "--out", str(at)]) == 0
    assert read_csv(at)[0] == ["a", "c"]


def test_corrupt_numpy_files_give_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez(good, x=rng.normal(size=(50, 2)))
    zipped = tmp_path / "zipped.npz"
    zipped.write_bytes(b"PK\x03\x04" + rng.bytes(300))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    noise = tmp_path / "noise.npy"
    noise.write_bytes(rng.bytes(300))
    expected = {
        zipped: "zipped.npz: not a readable numpy file, or a corrupt one",
        truncated: "truncated.npz",
        noise: "noise.npy: not a numpy file (it does not start with the .npy signature)",
    }
    for path, message in expected.items():
        assert main(["fit", str(path), "--out", str(tmp_path / "m.pt"), *TINY]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and "Python objects" not in err


# -- messages: from the estimator's words to the command line's -------------------------------


def test_translate_estimator_messages():
    from pyro_flows.cli.fit import translate

    assert translate(
        "X column 'k' is constant (every value is 7): it has no density", "t.csv"
    ) == ("t.csv: column 'k' is constant (every value is 7): it has no density")
    assert translate("base_components=3 needs base='gmm' (the normal base)", "t.csv") == (
        "--base-components 3 needs --base gmm (the normal base)"
    )
    assert translate("patience needs validation rows: set val_fraction > 0 or val_X", "d") == (
        "--patience needs validation rows: set --val-fraction > 0"
    )
    assert translate("flow='spline' takes no hidden_dims; leave hidden_dims=None", "d") == (
        "--flow spline takes no --hidden; leave out --hidden"
    )
    assert translate("too few rows to fit: X has 1 row(s), need >= 2", "d.csv") == (
        "d.csv: too few rows to fit: the data has 1 row(s), need >= 2"
    )


def test_user_errors_that_used_to_mislead(data, model, tmp_path, capsys):
    one = write_csv(tmp_path / "one.csv", ["a", "b"], [[1.0, 2.0]])
    assert main(["fit", str(one), "--out", str(tmp_path / "m.pt"), "--val-fraction", "0"]) == 1
    err = capsys.readouterr().err
    assert "one.csv: too few rows to fit" in err and "constant" not in err

    huge = write_csv(
        tmp_path / "huge.csv", ["a", "b"], [[i, 1e300 * (-1) ** i] for i in range(40)]
    )
    assert main(["fit", str(huge), "--out", str(tmp_path / "m.pt"), *TINY]) == 1
    assert "huge.csv: column 'b' is too large to standardise" in capsys.readouterr().err

    assert main(["score", str(model), str(data), "--context", "c"]) == 1
    err = capsys.readouterr().err
    assert f"{model}: the model is not conditional; drop --context" in err
    assert not list(tmp_path.glob("*.pt"))


def test_discrete_column_is_fitted_with_a_warning(tmp_path, capsys):
    rng = np.random.default_rng(8)
    rows = np.c_[rng.normal(size=200), rng.integers(0, 3, size=200)].tolist()
    path = write_csv(tmp_path / "d.csv", ["x", "k"], rows)
    assert main(["fit", str(path), "--out", str(tmp_path / "m.pt"), *TINY]) == 0
    err = capsys.readouterr().err
    assert err.startswith("pyro-flows fit: warning: ")
    assert "d.csv: column 'k' holds only 3 distinct integer values" in err
    assert "dequantize" in err


def test_help_shows_defaults_and_shared_options(capsys):
    assert main(["fit", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 1000)", "(default: 512)", "(default: 0.1)", "(default: auto)"):
        assert default in text
    assert "(default: maf, or spline for one data column without --context)" in text
    for command in ("fit", "score", "plot", "sample"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert all(option in text for option in ("--key", "--header", "--delimiter"))


# -- the corner plot -------------------------------------------------------------------------


def test_plot_draws_many_samples_whatever_the_data_size(model, data, tmp_path, capsys):
    small = tmp_path / "small.csv"
    with open(data) as f:
        rows = list(csv.reader(f))[:45]
    write_csv(small, rows[0], rows[1:])
    fig = tmp_path / "fig.png"
    capsys.readouterr()
    assert main(["plot", str(model), str(small), "--out", str(fig)]) == 0
    out = capsys.readouterr().out
    assert "corner plot of 44 data rows against 2000 model samples" in out
    assert fig.read_bytes()[:8] == PNG
    assert main(["plot", str(model), str(small), "--out", str(fig), "--columns", "b"]) == 0
    assert "(1 of 2 columns)" in capsys.readouterr().out
    assert main(["plot", str(model), str(small), "--out", str(fig), "--columns", "z"]) == 1
    assert "the model has no column 'z'; its columns are: a, b" in capsys.readouterr().err


def test_corner_figure_layout():
    from matplotlib.collections import PathCollection

    from pyro_flows.cli.figures import MAX_COLUMNS, corner_figure, highest_density_levels
    from pyro_flows.training import FitHistory

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    s = rng.normal(size=(2000, 3))
    losses = list(np.linspace(9.0, 2.0, 100))
    history = FitHistory(train_loss=losses, val_steps=[0, 50, 100], val_nll=[9.5, 3.0, 2.5])
    fig = corner_figure(x, s, ["a", "b", "c"], history, "d.csv")
    axes = fig.axes
    assert len(axes) == 3 * 3 + 2
    grid = np.array(axes[:9], dtype=object).reshape(3, 3)
    for i in range(3):
        for j in range(3):
            ax = grid[i, j]
            if i < j:  # upper triangle: contours of data and model
                assert len([c for c in ax.collections if not isinstance(c, PathCollection)]) >= 2
            elif i > j:  # lower triangle: points of data and model
                assert len([c for c in ax.collections if isinstance(c, PathCollection)]) == 2
            else:  # diagonal: data histogram, data and model densities
                assert len(ax.lines) == 2 and len(ax.patches) > 0
    assert grid[2, 0].get_xlabel() == "a" and grid[1, 0].get_ylabel() == "b"
    whole = axes[9]
    low, high = whole.get_ylim()
    assert low <= 2.0 and high >= 9.5  # the whole curve, first step and validation included
    assert whole.get_xlim()[0] == 0
    with pytest.raises(ValueError, match="1 to 20 columns"):
        corner_figure(
            np.zeros((5, MAX_COLUMNS + 1)), np.zeros((5, MAX_COLUMNS + 1)), [], history, ""
        )
    assert highest_density_levels(np.array([4.0, 3.0, 2.0, 1.0]), (0.7, 0.4)) == [3.0, 4.0]


def test_plot_draws_at_most_twenty_columns_and_says_so():
    from pyro_flows.cli.plot import _shown
    from pyro_flows.cli.table_io import CLIError

    names = [f"v{j}" for j in range(25)]
    shown, note = _shown(names, None)
    assert shown == list(range(20))
    assert "the model has 25 columns: drew the first 20, choose others with --columns" in note
    assert _shown(names[:20], None) == (list(range(20)), "")
    assert _shown(names, "v24,3") == ([24, 3], " (2 of 25 columns)")
    with pytest.raises(CLIError, match="at most 20 columns, got 21"):
        _shown(names, ",".join(names[:21]))
    with pytest.raises(CLIError, match="listed twice"):
        _shown(names, "v1,1")


def test_progress_in_a_log_is_a_few_lines(data, tmp_path, capsys):
    argv = ["fit", str(data), "--columns", "a,b", "--out", str(tmp_path / "m.pt")]
    tiny = [a for a in TINY if a != "--no-progress"]
    assert main([*argv, *tiny, "--steps", "200"]) == 0
    err = capsys.readouterr().err  # not a terminal
    assert "\r" not in err
    assert 1 <= len(err.splitlines()) <= 3 and "200/200" in err.splitlines()[-1], err


def test_readme_lists_the_flow_choices_of_the_parser():
    import re

    from pyro_flows.cli import build_parser

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    listed = re.search(r"`--flow` is one of (.*?);", section, re.S)[1]
    names = set(re.findall(r"`(\w+)`", listed))
    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    choices = next(a for a in fit._actions if a.dest == "flow").choices
    assert names == set(choices)
    assert "--steps" in section and "exit status" in section.lower()
