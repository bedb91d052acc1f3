"""Devices and data larger than memory in the training helpers (issue 20)."""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pyro_flows.data import Rows, load_npy, streaming_loc_scale
from pyro_flows.distributed import resolve_device
from pyro_flows.distributions import NormalizingFlow
from pyro_flows.flows import build
from pyro_flows.training import fit


def small_flow(dim=2, dtype=torch.float64, context_dim=None):
    torch.manual_seed(0)
    transform = build("maf", dim, num_layers=2, hidden_dims=[8], context_dim=context_dim)
    return NormalizingFlow(transform, dim, context_dim=context_dim).to(dtype)


def params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# -- devices ----------------------------------------------------------------------------------


def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None, torch.device("meta")) == torch.device("meta")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(name)
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu")


def test_resolve_device_with_mocked_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun, "cuda" is this process's GPU
    assert resolve_device("cuda") == torch.device("cuda", 1)


def test_fit_creates_no_tensor_on_the_default_device():
    # Inside this block a tensor made without an explicit device lands on "meta" and the
    # fit fails: every index and statistic must be made where the data or model are.
    x = torch.randn(300, 2, dtype=torch.float64)
    c = torch.randn(300, 1, dtype=torch.float64)
    for model, kwargs in (
        (small_flow(), {}),
        (small_flow(context_dim=1), {"context": c}),
    ):
        with torch.device("meta"):
            h = fit(model, x, num_steps=4, eval_every=2, progress=False, seed=0, **kwargs)
        assert np.isfinite(h.val_nll).all()


def test_fit_moves_the_model_to_device_and_batches_one_at_a_time():
    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(2, dtype=torch.float64))
            self.seen = []

        def log_prob(self, x):
            self.seen.append((x.device, x.dtype, x.shape[0]))
            return torch.distributions.Normal(self.loc, 1.0).log_prob(x).sum(-1)

    data = torch.randn(100, 2)  # float32 data, a float64 model: cast batch by batch
    model = Spy()
    fit(model, data, num_steps=3, batch_size=16, val_fraction=0, progress=False, device="cpu")
    assert model.seen == [(torch.device("cpu"), torch.float64, 16)] * 3
    with pytest.raises(ValueError, match="CUDA is not available|device"):
        if torch.cuda.is_available():
            pytest.skip("has CUDA")
        fit(model, data, num_steps=1, progress=False, device="cuda")


# -- data larger than memory ------------------------------------------------------------------


class Pairs(Dataset):
    def __init__(self, x, c):
        self.x, self.c = x, c

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.c[i]


def test_memmap_and_dataset_fit_like_the_array(tmp_path):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(400, 2, generator=gen, dtype=torch.float64) * 3 + 5).numpy()
    np.save(tmp_path / "x.npy", x)
    kwargs = {"num_steps": 12, "batch_size": 32, "eval_every": 5, "progress": False, "seed": 3}
    ref = small_flow()
    h_ref = fit(ref, x, **kwargs)
    for data in (load_npy(tmp_path / "x.npy"), TensorDataset(torch.from_numpy(x))):
        model = small_flow()
        h = fit(model, data, **kwargs)
        # the same split, order and steps; only the standardisation is streamed
        assert torch.allclose(params(model), params(ref), atol=1e-12)
        assert h.val_nll == pytest.approx(h_ref.val_nll, abs=1e-10)


def test_dataset_of_pairs_and_dataloader():
    x, c = torch.randn(200, 2, dtype=torch.float64), torch.randn(200, 1, dtype=torch.float64)
    kwargs = {"num_steps": 6, "batch_size": 20, "progress": False, "seed": 0}
    ref = small_flow(context_dim=1)
    fit(ref, x, context=c, **kwargs)
    model = small_flow(context_dim=1)
    fit(model, Pairs(x, c), **kwargs)
    assert torch.allclose(params(model), params(ref), atol=1e-12)

    loader = DataLoader(TensorDataset(x, c), batch_size=20, shuffle=True)
    model = small_flow(context_dim=1)
    h = fit(model, loader, num_steps=15, val_data=Pairs(x[:50], c[:50]), progress=False)
    assert h.num_steps == 15 and len(h.val_nll) == 2  # 15 steps over 10-batch epochs
    with pytest.raises(ValueError, match="context must be None with a DataLoader"):
        fit(model, loader, context=c, num_steps=1, progress=False)


def test_memmap_with_nan_is_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 2))
    x[70, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"data has a NaN or infinite value \(row 70, column 1\)"):
        fit(small_flow(), load_npy(tmp_path / "x.npy"), num_steps=1, progress=False)


def test_streaming_loc_scale_matches_the_in_memory_statistics():
    from pyro_flows.transforms.standardization import robust_loc_scale

    x = torch.from_numpy(np.random.default_rng(0).standard_t(3, size=(300_000, 3)) * 4 + 7)
    loc, scale = streaming_loc_scale(Rows(x, "x"), max_rows=50_000)
    exact_loc, exact_scale = robust_loc_scale(x)
    assert torch.allclose(loc, exact_loc, atol=0.05)
    assert torch.allclose(scale, exact_scale, rtol=0.02)
    small = streaming_loc_scale(Rows(x[:1000], "x"))  # under max_rows: exact
    assert torch.equal(small[0], robust_loc_scale(x[:1000])[0])


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from pyro_flows.data import load_npy
    from pyro_flows.distributions import NormalizingFlow
    from pyro_flows.flows import build
    from pyro_flows.training import fit

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # The same fit on a small file first: the model, the optimiser and torch's first-use
    # allocations (some 70-100 MB of a training loop, whatever the data) are then "before".
    small = sys.argv[1] + ".small.npy"
    np.save(small, np.random.default_rng(1).normal(size=(2000, 50)))

    def run(path):
        if sys.argv[2] == "cli":  # pyro-flows fit DATA --memmap yes: the DensityEstimator path
            from pyro_flows.cli.main import main

            assert main(["fit", path, "--memmap", "yes", "--out", path + ".pt", "--steps", "5",
                         "--layers", "2", "--hidden", "64", "--batch-size", "256",
                         "--val-fraction", "0.01", "--no-progress", "--device", "cpu"]) == 0
            return 0.0
        torch.manual_seed(0)
        model = NormalizingFlow(build("maf", 50, num_layers=2, hidden_dims=[64]), 50)
        h = fit(model, load_npy(path), num_steps=5, batch_size=256, eval_every=5,
                val_fraction=0.01, progress=False, seed=0)
        return h.val_nll[-1]

    run(small)
    before = peak_mb()
    nll = run(sys.argv[1])
    print(json.dumps({"before": before, "after": peak_mb(), "nll": nll}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["fit", "cli"])
def test_fit_on_a_300mb_memmap_keeps_memory_low(tmp_path, entry):
    path = tmp_path / "big.npy"
    rows = 750_000
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, 50))
    rng = np.random.default_rng(0)
    for i in range(0, rows, 50_000):
        big[i : i + 50_000] = rng.normal(size=(50_000, 50))
    big.flush()
    del big
    assert path.stat().st_size > 300e6
    (tmp_path / "rss.py").write_text(_RSS_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, str(tmp_path / "rss.py"), str(path), entry],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert np.isfinite(report["nll"])
    # pages of the map read by the streaming passes are file-backed, not counted as growth
    # of the heap; the index permutations (6 MB each) and chunks are
    assert report["after"] - report["before"] < 100, report


def test_flow_matching_creates_no_tensor_on_the_default_device():
    from pyro_flows.matching import fit_flow_matching
    from pyro_flows.nn import VectorField

    torch.manual_seed(0)
    field = VectorField(2, [8]).double()
    x = torch.randn(100, 2, dtype=torch.float64)
    with torch.device("meta"):
        h = fit_flow_matching(
            field,
            x,
            val_data=x[:20],
            num_steps=3,
            eval_every=2,
            progress=False,
            seed=0,
            device="cpu",
        )
    assert np.isfinite(h.train_loss).all() and np.isfinite(h.val_loss).all()


def test_device_benchmark_runs_on_the_cpu(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "devices.py"
    spec = importlib.util.spec_from_file_location("bench_devices", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [
        "--devices",
        "cpu",
        "--flows",
        "maf,glow",
        "--dim",
        "2",
        "--layers",
        "1",
        "--rows",
        "64",
        "--batch",
        "32",
        "--repeats",
        "1",
        "--hidden",
        "8",
    ]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    assert "GPU rows were not run" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("cpu ")]
    assert [r[1] for r in rows] == ["maf", "glow"]
    assert all(float(v.replace(",", "")) > 0 for r in rows for v in r[2:])


# -- DensityEstimator and the command line ------------------------------------------------------


def _table(path, rows=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2)) * [1.0, 3.0] + [5.0, -2.0]
    np.save(path, x)
    return x


def test_density_estimator_device_and_load(tmp_path, monkeypatch):
    from pyro_flows.density import DensityEstimator

    x = _table(tmp_path / "x.npy")
    est = DensityEstimator(
        "maf", num_layers=1, hidden_dims=(8,), num_steps=5, seed=0, device="cpu"
    ).fit(x)
    assert est.flow_.base_loc.device.type == "cpu"
    est.save(tmp_path / "m.pt")
    loaded = DensityEstimator.load(tmp_path / "m.pt", device="auto")
    assert loaded.device == "auto" and "device" not in loaded._meta()["params"]
    assert np.allclose(loaded.score_samples(x[:5]), est.score_samples(x[:5]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        DensityEstimator("maf", num_steps=1, device="cuda").fit(x)
    with pytest.raises(ValueError, match="CUDA is not available"):
        DensityEstimator.load(tmp_path / "m.pt", device="cuda:0")
    with pytest.raises(
        ValueError, match="checkpoint needs a named flow family|unknown flow 'auto'"
    ):
        DensityEstimator("auto").fit(x, checkpoint=tmp_path / "c.pt")


@pytest.mark.parametrize("command", ["fit", "score", "sample"])
def test_cli_device_cuda_without_cuda_is_one_line(command, tmp_path, capsys, monkeypatch):
    from pyro_flows.cli.main import main
    from pyro_flows.density import DensityEstimator

    _table(tmp_path / "x.npy")
    DensityEstimator("maf", num_layers=1, hidden_dims=(8,), num_steps=2, seed=0).fit(
        np.load(tmp_path / "x.npy")
    ).save(tmp_path / "m.pt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = {
        "fit": ["fit", str(tmp_path / "x.npy"), "--out", str(tmp_path / "new.pt")],
        "score": ["score", str(tmp_path / "m.pt"), str(tmp_path / "x.npy")],
        "sample": ["sample", str(tmp_path / "m.pt"), "--out", str(tmp_path / "s.npy")],
    }[command]
    assert main([*argv, "--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"pyro-flows {command}: error: device 'cuda' was asked for")
    assert not (tmp_path / "new.pt").exists() and not (tmp_path / "s.npy").exists()


def test_cli_fit_checkpoint_and_resume(tmp_path, capsys):
    from pyro_flows.cli.main import main
    from pyro_flows.density import DensityEstimator

    x = _table(tmp_path / "x.npy")
    common = [
        "fit",
        str(tmp_path / "x.npy"),
        "--layers",
        "1",
        "--hidden",
        "8",
        "--steps",
        "12",
        "--dtype",
        "float64",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main([*common, "--out", str(tmp_path / "plain.pt")]) == 0
    ckpt = tmp_path / "run.ckpt"
    argv = [
        *common,
        "--out",
        str(tmp_path / "a.pt"),
        "--checkpoint",
        str(ckpt),
        "--checkpoint-every",
        "5",
        "--resume",
    ]
    assert main(argv) == 0  # no checkpoint yet: a fresh start
    assert torch.load(ckpt, weights_only=False)["step"] == 12
    argv[argv.index(str(tmp_path / "a.pt"))] = str(tmp_path / "b.pt")
    assert main(argv) == 0  # resumed from the finished run: the same model
    a, b = (DensityEstimator.load(tmp_path / f"{n}.pt").score_samples(x) for n in "ab")
    assert np.array_equal(a, b)
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "c.pt"), "--resume"]) == 1
    assert "--resume continues from --checkpoint" in capsys.readouterr().err


def test_density_estimator_on_a_memmap_fits_like_in_memory(tmp_path):
    from pyro_flows.data import MemmapTable
    from pyro_flows.density import DensityEstimator

    rng = np.random.default_rng(0)
    table = np.column_stack([rng.normal(size=(500, 2)) * [2.0, 0.5] + 3, rng.normal(size=500)])
    np.save(tmp_path / "t.npy", table)
    kwargs = {
        "num_layers": 2,
        "hidden_dims": (8,),
        "num_steps": 15,
        "seed": 0,
        "dtype": "float64",
        "val_fraction": 0.1,
    }
    if "dequantize" in inspect.signature(DensityEstimator).parameters:
        kwargs["dequantize"] = False  # the in-memory fit would look for a lattice
    ref = DensityEstimator("maf", **kwargs).fit(table[:, :2], table[:, 2:])
    est = DensityEstimator("maf", **kwargs).fit(
        MemmapTable(load_npy(tmp_path / "t.npy"), [0, 1], [2])
    )
    assert est.info_["out_of_core"] and est.info_["num_val"] == ref.info_["num_val"] == 50
    assert np.allclose(est.mean_, ref.mean_) and np.allclose(est.scale_, ref.scale_)
    assert est.history_.val_nll == pytest.approx(ref.history_.val_nll, abs=1e-8)
    assert np.allclose(
        est.score_samples(table[:5, :2], table[:5, 2:]),
        ref.score_samples(table[:5, :2], table[:5, 2:]),
        atol=1e-8,
    )
    est.save(tmp_path / "m.pt")  # saves and loads like any other
    assert DensityEstimator.load(tmp_path / "m.pt").context_dim_ == 1
    bad = table.copy()
    bad[123, 1] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"X column 1 has a NaN or infinite value \(row 123\)"):
        DensityEstimator("maf", **kwargs).fit(load_npy(tmp_path / "bad.npy"))
    with pytest.raises(
        ValueError, match="flow='auto' compares several candidates|unknown flow 'auto'"
    ):
        DensityEstimator("auto").fit(load_npy(tmp_path / "t.npy"))


def test_cli_memmap_fit_and_score_match_in_memory(tmp_path, capsys):
    from pyro_flows.cli.main import main
    from pyro_flows.density import DensityEstimator

    rng = np.random.default_rng(1)
    x = np.column_stack([rng.normal(size=(600, 2)) * [2.0, 0.5] + 3, rng.normal(size=600)])
    np.save(tmp_path / "x.npy", x)
    common = [
        "fit",
        str(tmp_path / "x.npy"),
        "--context",
        "2",
        "--layers",
        "1",
        "--hidden",
        "8",
        "--steps",
        "10",
        "--dtype",
        "float64",
        "--no-progress",
        "--device",
        "cpu",
        "--val-fraction",
        "0.1",
    ]
    for mode in ("yes", "no"):
        assert main([*common, "--memmap", mode, "--out", str(tmp_path / f"{mode}.pt")]) == 0
    capsys.readouterr()
    scores = {}
    for mode in ("yes", "no"):
        out = tmp_path / f"s_{mode}.npy"
        argv = [
            "score",
            str(tmp_path / f"{mode}.pt"),
            str(tmp_path / "x.npy"),
            "--memmap",
            mode,
            "--out",
            str(out),
            "--no-progress",
        ]
        assert main(argv) == 0, capsys.readouterr().err
        scores[mode] = np.load(out)
    assert np.allclose(scores["yes"], scores["no"], atol=1e-8)
    ref = DensityEstimator.load(tmp_path / "no.pt").score_samples(x[:, :2], x[:, 2:])
    assert np.allclose(scores["no"], ref)
    assert main(["fit", str(tmp_path / "x.csv"), "--memmap", "yes", "--out", "m.pt"]) == 1
    assert "--memmap yes applies to .npy files only" in capsys.readouterr().err


def test_fit_svi_device(monkeypatch):
    import pyro
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoNormal

    from pyro_flows.infer import fit_svi
    from pyro_flows.infer.compare import _to_device

    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    data = torch.randn(30) + 2
    # the steps run with the device as torch's default: what the model and guide create
    # without a device lands there, here the CPU inside an outer meta block
    with torch.device("meta"):
        losses = fit_svi(model, AutoNormal(model), data, num_steps=5, device="cpu")
    assert np.isfinite(losses).all()
    assert pyro.param("AutoNormal.locs.loc").device.type == "cpu"
    moved = _to_device({"a": (torch.zeros(1), [torch.ones(1)]), "b": 3}, torch.device("meta"))
    assert moved["a"][0].is_meta and moved["a"][1][0].is_meta and moved["b"] == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        fit_svi(model, AutoNormal(model), data, num_steps=1, device="cuda")


# --- examples take --device ---------------------------------------------------------------

DEVICE_EXAMPLES = [
    "density_2d",
    "ffjord_2d",
    "flow_matching_2d",
    "flow_matching_prior",
    "cvae_digits",
    "pivae_poisson",
    "glow_digits",
]


class _Stop(Exception):
    """Raised by a stand-in trainer: training was reached, with these facts."""


def _param_device(module):
    return next(module.parameters()).device


@pytest.mark.parametrize("name", DEVICE_EXAMPLES)
def test_example_device_option(load_example, name):
    example = load_example(name)
    assert example.parse_args([]).device == "auto"
    assert example.parse_args(["--device", "cpu"]).device == "cpu"
    with pytest.raises(SystemExit):  # one line from argparse, not a traceback from training
        example.parse_args(["--device", "gpu0"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            example.parse_args(["--device", "cuda"])


TINY_2D = ["--num-samples", "300", "--num-test", "200", "--no-progress", "--hidden", "8"]


@pytest.mark.parametrize("name", ["density_2d", "ffjord_2d"])
def test_example_moves_the_flow_to_device(load_example, monkeypatch, tmp_path, name):
    """The flow is on --device when training starts (the meta device: nothing is computed)."""
    example = load_example(name)

    def stand_in(model, data, **kwargs):
        raise _Stop(_param_device(model), kwargs.get("device"))

    monkeypatch.setattr(example, "fit", stand_in)
    argv = [*TINY_2D, "--dataset", "8gaussians", "--device", "meta", "--out", str(tmp_path / "a")]
    with pytest.raises(_Stop) as stop:
        example.main(example.parse_args(argv))
    assert stop.value.args[0] == torch.device("meta")


def test_flow_matching_examples_pass_device(load_example, monkeypatch, tmp_path):
    seen = []

    def stand_in(model, data, **kwargs):
        seen.append(kwargs.get("device"))
        raise _Stop

    for name in ("flow_matching_2d", "flow_matching_prior"):
        example = load_example(name)
        monkeypatch.setattr(example, "fit_flow_matching", stand_in)
        if name == "flow_matching_2d":
            monkeypatch.setattr(example, "fit", stand_in)
            args = example.parse_args([*TINY_2D, "--device", "meta"])
            for method in example.METHODS:
                with pytest.raises(_Stop):
                    example.train(method, torch.randn(50, 2), args)
        else:
            args = example.parse_args(["--num-draws", "100", "--no-progress", "--device", "meta"])
            args.out = str(tmp_path / "prior.png")
            with pytest.raises(_Stop):
                example.main(args)
    assert seen == ["meta"] * 4


@pytest.mark.parametrize("name", ["cvae_digits", "pivae_poisson"])
def test_svi_examples_train_on_device(load_example, monkeypatch, tmp_path, name):
    """fit_svi gets --device, and the model's own networks are there before it starts."""
    example = load_example(name)

    def stand_in(model, guide, *args, **kwargs):
        raise _Stop(_param_device(model.__self__), kwargs.get("device"))

    monkeypatch.setattr(example, "fit_svi", stand_in)
    argv = ["--num-steps", "1", "--no-progress", "--device", "meta", "--out", str(tmp_path / "a")]
    with pytest.raises(_Stop) as stop:
        example.main(example.parse_args(argv))
    assert stop.value.args == (torch.device("meta"), torch.device("meta"))
