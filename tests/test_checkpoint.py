"""Checkpoints and resume: a run killed with SIGKILL and resumed ends where an uninterrupted
run does (issue 20)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from pyro_flows.checkpoint import Checkpointer
from pyro_flows.training import fit

_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import pyro_flows.checkpoint as ck
    from pyro_flows.distributions import NormalizingFlow
    from pyro_flows.flows import build
    from pyro_flows.training import fit

    mode, folder = sys.argv[1], sys.argv[2]
    if mode == "kill":  # SIGKILL right after the second checkpoint is on disk
        saved, real = [], ck.atomic_save
        def save_then_die(obj, path):
            real(obj, path)
            saved.append(obj["step"])
            if len(saved) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        ck.atomic_save = save_then_die
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(600, 2, generator=gen, dtype=torch.float64) * 2 + 1
    model = NormalizingFlow(build("maf", 2, num_layers=2, hidden_dims=[16]), 2).double()
    ckpt = None if mode == "full" else os.path.join(folder, "run.ckpt")
    h = fit(model, data, num_steps=30, batch_size=64, eval_every=4, patience=50,
            progress=False, seed=5, checkpoint=ckpt, checkpoint_every=5, resume=mode == "resume")
    torch.save({"params": [p.detach() for p in model.parameters()], "history": h},
               os.path.join(folder, mode + ".pt"))
    """
)


def _run(tmp_path, mode):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "run.py"), mode, str(tmp_path)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(process):
    _, err = process.communicate(timeout=120)
    if process.returncode not in (0, -signal.SIGKILL):
        print(err)
    return process.returncode


@pytest.mark.slow
def test_sigkilled_fit_resumes_to_the_same_parameters(tmp_path):
    (tmp_path / "run.py").write_text(_SCRIPT)
    killed, full = _run(tmp_path, "kill"), _run(tmp_path, "full")
    assert _wait(killed) == -signal.SIGKILL
    assert _wait(full) == 0
    state = torch.load(tmp_path / "run.ckpt", weights_only=False)
    assert state["step"] == 10  # the second checkpoint, intact
    assert not (tmp_path / "kill.pt").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    resumed = _run(tmp_path, "resume")
    assert _wait(resumed) == 0
    a = torch.load(tmp_path / "resume.pt", weights_only=False)
    b = torch.load(tmp_path / "full.pt", weights_only=False)
    for p, q in zip(a["params"], b["params"], strict=True):
        assert p.dtype == torch.float64
        assert torch.equal(p, q)
    assert a["history"].train_loss == b["history"].train_loss
    assert a["history"].val_nll == b["history"].val_nll
    assert a["history"].best_step == b["history"].best_step


class Line(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def log_prob(self, x):
        return torch.distributions.Normal(self.loc, 1.0).log_prob(x).sum(-1)


def test_resume_continues_in_process_and_refuses_other_settings(tmp_path):
    data = torch.randn(200, 2, dtype=torch.float64) + 3
    path = tmp_path / "c.pt"
    full = Line()
    fit(full, data, num_steps=20, lr=0.05, progress=False, seed=0)
    part = Line()
    fit(
        part,
        data,
        num_steps=20,
        lr=0.05,
        progress=False,
        seed=0,
        checkpoint=path,
        checkpoint_every=7,
    )
    state = torch.load(path, weights_only=False)
    assert state["step"] == 20 and state["kind"] == "fit"
    # a finished run resumed takes no step and gives the same model and history
    part = Line()
    h = fit(
        part,
        data,
        num_steps=20,
        lr=0.05,
        progress=False,
        seed=0,
        checkpoint=path,
        checkpoint_every=7,
        resume=True,
    )
    assert h.num_steps == 20 and torch.equal(part.loc, full.loc)
    with pytest.raises(ValueError, match="checkpoint was written with batch_size=180"):
        fit(Line(), data, num_steps=20, batch_size=32, progress=False, resume=path)
    with pytest.raises(FileNotFoundError, match="resume: no checkpoint file"):
        fit(Line(), data, num_steps=2, progress=False, resume=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="resume=True resumes from checkpoint"):
        fit(Line(), data, num_steps=2, progress=False, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every must be"):
        Checkpointer.create(path, 0, None)


class Interrupt(Exception):
    pass


def test_flow_matching_interrupted_and_resumed_matches_uninterrupted(tmp_path):
    from pyro_flows.matching import fit_flow_matching
    from pyro_flows.nn import VectorField

    data = torch.randn(300, 2, dtype=torch.float64) * 0.5 + 2
    val = torch.randn(50, 2, dtype=torch.float64) * 0.5 + 2

    def run(**kwargs):
        torch.manual_seed(0)
        field = VectorField(2, [16]).double()
        h = fit_flow_matching(
            field,
            data,
            val_data=val,
            num_steps=20,
            batch_size=32,
            eval_every=5,
            progress=False,
            seed=4,
            **kwargs,
        )
        return field, h

    def interrupt(step, history):
        if step == 13:  # after the checkpoint of step 10: as if the job were pre-empted
            raise Interrupt

    path = tmp_path / "fm.ckpt"
    full_field, full_h = run()
    with pytest.raises(Interrupt):
        run(checkpoint=path, checkpoint_every=5, callback=interrupt)
    assert torch.load(path, weights_only=False)["step"] == 10
    field, h = run(checkpoint=path, checkpoint_every=5, resume=True)
    for p, q in zip(field.parameters(), full_field.parameters(), strict=True):
        assert torch.equal(p, q)
    assert h.train_loss == full_h.train_loss and h.val_loss == full_h.val_loss
    with pytest.raises(ValueError, match="not a checkpoint of fit "):
        fit(Line(), data, num_steps=2, progress=False, resume=path)


def test_fit_svi_interrupted_and_resumed_matches_uninterrupted(tmp_path):
    import pyro
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoNormal

    from pyro_flows.infer import fit_svi

    data = torch.randn(50, dtype=torch.float64) + 1.5
    calls = []

    def model(x, stop_at=None):
        calls.append(1)
        if stop_at is not None and len(calls) == stop_at:
            raise Interrupt
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 5.0))
        with pyro.plate("data", 50, subsample_size=10) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])

    def run(**kwargs):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        calls.clear()
        guide = AutoNormal(model)
        stop_at = kwargs.pop("stop_at", None)
        losses = fit_svi(model, guide, data, num_steps=20, lr=0.05, stop_at=stop_at, **kwargs)
        return losses, pyro.get_param_store().get_state()["params"]

    path = tmp_path / "svi.ckpt"
    full_losses, full = run()
    with pytest.raises(Interrupt):
        run(checkpoint=path, checkpoint_every=5, stop_at=13)  # the guide's pass + 12 steps
    assert torch.load(path, weights_only=False)["step"] == 10
    losses, params = run(checkpoint=path, checkpoint_every=5, resume=True)
    assert losses == full_losses
    assert params.keys() == full.keys()
    for name in params:
        assert torch.equal(params[name], full[name])


def test_checkpoint_minutes_writes_on_the_clock(tmp_path):
    import time

    saver = Checkpointer.create(tmp_path / "c.pt", 1000, None, True, checkpoint_minutes=0.5)
    assert not saver.due(1, last=False) and saver.due(1000, last=False) and saver.due(7, True)
    saver.clock[0] -= 31  # half a minute and more since the start
    assert saver.due(1, last=False)
    saver.save("fit", {"step": 1})
    assert not saver.due(2, last=False)  # the clock restarts at each write
    assert time.monotonic() - saver.clock[0] < 5
    assert not Checkpointer.create(tmp_path / "c.pt", 10, None, False, 1e-9).due(3, True)
    with pytest.raises(ValueError, match="checkpoint_minutes must be a positive number"):
        fit(
            Line(),
            torch.randn(10, 2),
            num_steps=1,
            progress=False,
            checkpoint=tmp_path / "d",
            checkpoint_minutes=0,
        )
