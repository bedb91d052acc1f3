"""``python -m pyro_flows``: the ``pyro-flows`` command line (see :mod:`pyro_flows.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
