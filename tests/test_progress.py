import io

import numpy as np
import pytest
import torch

from pyro_flows._progress import LOG_INTERVAL, progress_bar
from pyro_flows.flows import normalizing_flow
from pyro_flows.training import fit


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_log_is_a_few_plain_lines():
    log = io.StringIO()
    with progress_bar(5000, "fit", True, file=log) as bar:
        for _ in range(5000):
            bar.update(1)
            bar.set_postfix(train="1.0")
    text = log.getvalue()
    assert LOG_INTERVAL >= 10
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3, lines  # the start (maybe), the end; no redraw per step
    assert "5000/5000" in lines[-1]


def test_progress_on_a_terminal_redraws_in_place():
    term = Terminal()
    with progress_bar(50, "fit", True, file=term) as bar:
        for _ in range(50):
            bar.update(1)
    assert "\r" in term.getvalue()


def test_disabled_progress_writes_nothing(capsys):
    with progress_bar(10, "fit", False) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_fit_refuses_empty_data_without_a_split():
    flow = normalizing_flow("maf", 2, num_layers=1, hidden_dims=[8])
    with pytest.raises(ValueError, match=r"data is empty \(shape \(0, 2\)\)"):
        fit(flow, torch.zeros(0, 2), val_fraction=0.0, num_steps=2, progress=False)
    with pytest.raises(ValueError, match="data is empty"):
        fit(flow, np.zeros((0, 2)), val_fraction=0.0, num_steps=2, progress=False)
