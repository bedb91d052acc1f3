"""Data-parallel training under torchrun, on CPU with gloo (issue 20)."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from pyro_flows.distributed import DistributedContext

_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    import torch.distributed as dist
    from pyro_flows.distributions import NormalizingFlow
    from pyro_flows.flows import build
    from pyro_flows.training import fit

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(500, 2, generator=gen, dtype=torch.float64) * 2 + 1
    model = NormalizingFlow(build("maf", 2, num_layers=2, hidden_dims=[16]), 2).double()
    if dist.is_available() and "RANK" in __import__("os").environ:
        torch.manual_seed(100 + int(__import__("os").environ["RANK"]))  # DDP syncs the start
    h = fit(model, data, num_steps=20, batch_size=int(sys.argv[2]), eval_every=5, lr=1e-2,
            progress=True, seed=3)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save({"params": [p.detach() for p in model.parameters()], "history": h},
               f"{sys.argv[1]}.{rank}")
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, batch_size):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(tmp_path / "run.py"),
        str(tmp_path / "ddp"),
        str(batch_size),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def test_shard_needs_a_divisible_batch():
    ctx = DistributedContext(rank=1, world_size=4)
    assert ctx.shard(64) == slice(16, 32)
    with pytest.raises(ValueError, match="batch_size=30 is not divisible by the world size 4"):
        ctx.shard(30)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    (tmp_path / "run.py").write_text(_SCRIPT)
    out = _torchrun(tmp_path, 64)
    assert out.returncode == 0, out.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "one"), "64"],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one = torch.load(f"{tmp_path / 'one'}.0", weights_only=False)
    ranks = [torch.load(f"{tmp_path / 'ddp'}.{r}", weights_only=False) for r in (0, 1)]
    for run in ranks:
        for p, q in zip(run["params"], one["params"], strict=True):
            assert torch.allclose(p, q, atol=1e-6, rtol=0)
        assert run["history"].train_loss == pytest.approx(one["history"].train_loss, abs=1e-6)
        assert run["history"].val_nll == pytest.approx(one["history"].val_nll, abs=1e-6)
    # rank 0 alone shows progress: one final progress line, not two
    assert out.stderr.count("fit: 100%") == 1, out.stderr[-2000:]


@pytest.mark.slow
def test_world_size_must_divide_the_batch(tmp_path):
    (tmp_path / "run.py").write_text(_SCRIPT)
    out = _torchrun(tmp_path, 63)
    assert out.returncode != 0
    assert "batch_size=63 is not divisible by the world size 2" in out.stderr


@pytest.mark.slow
def test_cli_fit_under_torchrun_writes_one_model_that_scores_like_one_process(tmp_path):
    import numpy as np

    from pyro_flows.density import DensityEstimator

    x = np.random.default_rng(0).normal(size=(600, 3)) * [1.0, 2.0, 0.5]
    np.save(tmp_path / "x.npy", x)
    args = [
        "fit",
        str(tmp_path / "x.npy"),
        "--layers",
        "2",
        "--hidden",
        "16",
        "--steps",
        "20",
        "--batch-size",
        "64",
        "--dtype",
        "float64",
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "pyro_flows",
        *args,
        "--out",
        str(tmp_path / "ddp.pt"),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("saved ") == 1  # rank 0 alone reports and writes
    one = subprocess.run(
        [sys.executable, "-m", "pyro_flows", *args, "--out", str(tmp_path / "one.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt", "one.pt", "x.npy"]
    ddp = DensityEstimator.load(tmp_path / "ddp.pt").score_samples(x)
    single = DensityEstimator.load(tmp_path / "one.pt").score_samples(x)
    assert np.allclose(ddp, single, atol=1e-6, rtol=0)


_SVI_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import pyro, torch
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoDelta
    torch.set_num_threads(1)
    import torch.distributed as dist_
    from pyro_flows.infer import fit_svi

    torch.set_default_dtype(torch.float64)
    data = torch.linspace(-1.0, 3.0, 40)
    for mode in sys.argv[2].split(","):
        sub = 10 if mode == "subsample" else None  # each rank its own 10 rows

        def model(x):
            loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
            scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
            with pyro.plate("data", len(x), subsample_size=sub) as idx:
                pyro.sample("x", dist.Normal(loc, scale), obs=x[idx])

        pyro.clear_param_store()
        pyro.set_rng_seed(int(os.environ.get("RANK", "0")))  # rank 0's start is shared
        guide = AutoDelta(model)  # MAP: without subsampling, a deterministic ELBO
        losses = fit_svi(model, guide, data, num_steps=20, lr=0.05)
        rank = dist_.get_rank() if dist_.is_initialized() else 0
        store = pyro.get_param_store()
        torch.save({k: store[k].detach() for k in store.keys()} | {"losses": losses},
                   f"{sys.argv[1]}.{mode}.{rank}")
    """
)


@pytest.mark.slow
def test_fit_svi_under_torchrun_matches_one_process(tmp_path):
    (tmp_path / "svi.py").write_text(_SVI_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(tmp_path / "svi.py"),
        str(tmp_path / "ddp"),
        "full,subsample",
    ]
    ddp = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    one = subprocess.run(
        [sys.executable, str(tmp_path / "svi.py"), str(tmp_path / "one"), "full"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _, err = ddp.communicate(timeout=240)
    assert ddp.returncode == 0, err[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]

    def load(name, mode, rank):
        return torch.load(f"{tmp_path / name}.{mode}.{rank}", weights_only=False)

    single = load("one", "full", 0)
    for rank in (0, 1):
        run = load("ddp", "full", rank)
        assert run["losses"] == pytest.approx(single["losses"], abs=1e-9)
        for key in ("AutoDelta.loc", "AutoDelta.scale"):
            assert torch.allclose(run[key], single[key], atol=1e-9)
    # a subsampled plate: each rank draws its own rows, the averaged gradients keep the
    # ranks' parameters equal (each rank's ELBO keeps the plate's scale 40 / 10)
    a, b = load("ddp", "subsample", 0), load("ddp", "subsample", 1)
    assert a["AutoDelta.scale"] == b["AutoDelta.scale"] and a["losses"] == b["losses"]
    assert a["losses"] != single["losses"]  # the subsample was drawn
