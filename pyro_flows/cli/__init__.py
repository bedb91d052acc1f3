"""The ``pyro-flows`` command line: fit a flow to a data file, then score, sample and plot.

.. code-block:: bash

    pyro-flows fit data.csv --out model.pt
    pyro-flows score model.pt test.csv --out logp.csv
    pyro-flows sample model.pt -n 1000 --out samples.csv
    pyro-flows plot model.pt test.csv --out fig.png

Data files are ``.csv`` (with or without a header line), ``.npy`` (a 2-D array) or ``.npz``
(choose the array with ``--key``). User errors (a missing file, a non-numeric or constant
column, NaN/inf values, an output path that is one of the inputs, ...) print one line naming
the file, column or option and exit with status 1; a command line that argparse cannot parse
exits with status 2 and the usage. Outputs are written to a temporary file that is renamed
only when complete, so a failed command leaves no partial file.

The package holds one module per sub-command (:mod:`~pyro_flows.cli.fit`,
:mod:`~pyro_flows.cli.score`, :mod:`~pyro_flows.cli.sample`, :mod:`~pyro_flows.cli.plot`),
each with ``register_subcommand(subparsers)`` and ``run(args)``;
:mod:`~pyro_flows.cli.table_io` reads and writes the tables, :mod:`~pyro_flows.cli.options`
holds the shared options and argument types, :mod:`~pyro_flows.cli.models` finds a saved
model's columns, :mod:`~pyro_flows.cli.figures` draws, and :mod:`~pyro_flows.cli.main`
assembles the parser.
"""

from .main import build_parser, main
from .table_io import CLIError

__all__ = ["CLIError", "build_parser", "main"]
