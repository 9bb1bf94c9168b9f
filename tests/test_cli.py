"""The command line's error handling: every error of ours (and the ValueError, KeyError,
IndexError, RuntimeError, ArithmeticError, OSError that bad input raises) is one line on stderr
with exit status 1; anything else one "internal error" line with a bug-report hint (status 3);
--debug / MESU_SNN_DEBUG=1 add the traceback."""
import pytest

import mesu_snn.commands.inspect as inspect_cmd
from mesu_snn.cli import main
from mesu_snn.config import ConfigError
from mesu_snn.errors import CLIError, DivergedError, NonFiniteStepError


def _raise(exc):
    def run(args):
        raise exc
    return run


@pytest.mark.parametrize("exc", [CLIError("bad option"), ConfigError("config field x: bad"), ValueError("bad value"),
                                 KeyError("missing_key"), IndexError("index 7 out of range"),
                                 RuntimeError("HDF5 error\nsecond line"), NonFiniteStepError("step refused"),
                                 DivergedError("the run diverged"), OSError("disk"), FloatingPointError("overflow")])
def test_errors_of_ours_and_bad_input_are_one_line(monkeypatch, capsys, exc):
    monkeypatch.delenv("MESU_SNN_DEBUG", raising=False)
    monkeypatch.setattr(inspect_cmd, "run", _raise(exc))
    assert main(["inspect", "somewhere"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mesu-snn: error: "), err
    assert "Traceback" not in err[0]
    if isinstance(exc, KeyError):
        assert "KeyError: 'missing_key'" in err[0]


def test_a_bug_is_one_line_with_a_report_hint_and_the_traceback_on_request(monkeypatch, capsys):
    monkeypatch.delenv("MESU_SNN_DEBUG", raising=False)
    monkeypatch.setattr(inspect_cmd, "run", _raise(TypeError("unsupported operand")))
    assert main(["inspect", "x"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mesu-snn: internal error: TypeError: unsupported operand")
    assert "bug" in err[0] and "--debug" in err[0]
    assert main(["--debug", "inspect", "x"]) == 3
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MESU_SNN_DEBUG", "1")
    assert main(["inspect", "x"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("mesu-snn: internal error")


def test_warnings_are_one_line(monkeypatch, capsys):
    import warnings

    def run(args):
        warnings.warn("data.train_per_task: 100000 is more than\nthe data has")
        return 0
    monkeypatch.setattr(inspect_cmd, "run", run)
    assert main(["inspect", "x"]) == 0
    assert capsys.readouterr().err.strip().splitlines() == \
        ["mesu-snn: warning: data.train_per_task: 100000 is more than the data has"]
