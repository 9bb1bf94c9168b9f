"""Errors of the command line (one module, so ``python -m mesu_snn.cli`` and ``mesu-snn``
share one class)."""


class CLIError(Exception):
    """A user error to report as one line ``mesu-snn: error: ...``, without a traceback."""
