"""``mesu-snn`` command line. Each subcommand lives in ``mesu_snn/commands/<name>.py`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.

Errors a user can fix (bad config, missing data, unreadable file, an output that exists)
are reported as one line ``mesu-snn: error: ...`` with a non-zero exit status.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "train", "plot", "inspect", "export")


from .errors import CLIError  # noqa: F401  (re-exported: commands raise it)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    parser = argparse.ArgumentParser(prog="mesu-snn", description="Continual learning in spiking networks "
                                     "with Bayesian, metaplastic synapses (MESU).")
    parser.add_argument("--version", action="version", version=f"mesu-snn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"mesu_snn.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"mesu_snn.commands.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import torch
    threads = torch.get_num_threads()       # commands may set it (schedule.threads, the demo): restored after
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mesu-snn: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, FileExistsError, PermissionError, OSError) as e:
        print(f"mesu-snn: error: {e}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
