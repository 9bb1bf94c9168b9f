"""``mesu-snn`` command line. Each subcommand lives in ``mesu_snn/commands/<name>.py`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.

Errors a user can fix (bad config, missing data, unreadable file, an output that exists, a
run that diverged) are reported as one line ``mesu-snn: error: ...`` with exit status 1: every
:class:`~mesu_snn.errors.MesuError`, and the ``ValueError``, ``KeyError``, ``IndexError``,
``RuntimeError``, ``ArithmeticError`` and ``OSError`` that bad input raises. Anything else is
a bug: one line ``mesu-snn: internal error: ...`` with a hint to report it, exit status 3.
``--debug`` (or the environment variable ``MESU_SNN_DEBUG=1``) prints the full traceback
instead, for either kind.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings

COMMANDS = ("demo", "train", "plot", "inspect", "export")

#: exceptions that mean bad input (reported as one line); anything else is a bug
USER_ERRORS = (ValueError, KeyError, IndexError, RuntimeError, ArithmeticError, OSError)


from .errors import CLIError, MesuError  # noqa: F401  (CLIError re-exported: commands raise it)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    parser = argparse.ArgumentParser(prog="mesu-snn", description="Continual learning in spiking networks "
                                     "with Bayesian, metaplastic synapses (MESU).")
    parser.add_argument("--version", action="version", version=f"mesu-snn {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error (also: MESU_SNN_DEBUG=1)")
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
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mesu-snn: interrupted", file=sys.stderr)
        return 130
    except Exception as e:          # noqa: BLE001 - the one place that turns errors into exit codes
        if getattr(args, "debug", False) or os.environ.get("MESU_SNN_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        return _report(e)
    finally:
        torch.set_num_threads(threads)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mesu-snn: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__      # one line, whatever the message holds
    if isinstance(e, (MesuError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError)) or \
            type(e) in (ValueError, OSError):
        return msg
    return f"{type(e).__name__}: {msg}"


def _report(e: BaseException) -> int:
    """Print ``e`` as one line on stderr; 1 for bad input, 3 for a bug (with the report hint)."""
    if isinstance(e, (MesuError, *USER_ERRORS)):
        print(f"mesu-snn: error: {_one_line(e)}", file=sys.stderr)
        return 1
    print(f"mesu-snn: internal error: {_one_line(e)} -- this is a bug in mesu-snn: please report it with the command "
          "and its output with --debug (or MESU_SNN_DEBUG=1), which adds the traceback",
          file=sys.stderr)
    return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
