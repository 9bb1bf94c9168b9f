"""Subcommands of the ``mesu-snn`` CLI, one module each (see :mod:`mesu_snn.cli`)."""
