"""A plain ``pip install .`` (declared dependencies only, no extras) gives a working package.

Builds a fresh venv without system site-packages, installs the pinned CPU torch (from the
local wheel/cache the package registries serve) and then the package from this checkout
with its declared dependencies only, and checks that ``import mesu_snn``, ``mesu-snn --help``
and a tiny ``mesu-snn train`` work and that event data asks for the ``events`` extra.
Slow (about a minute or two): it installs real packages.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"
OPTIONAL = ("tonic", "snntorch", "norse", "nirtorch")

pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    if shutil.which("pip") is None and not (Path(sys.base_prefix) / "bin").exists():  # pragma: no cover
        pytest.skip("no pip available to build a fresh environment")
    d = tmp_path_factory.mktemp("fresh")
    env_dir = d / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + [TORCH_PIN], env=env)
    src = d / "src"                      # a copy, so the build never writes into the checkout
    top_level = {".venv", ".git", "runs", "build", "dist", ".pytest_cache", ".hypothesis"}   # not the package's runs/

    def ignore(folder, names):
        at_root = Path(folder) == ROOT
        return {n for n in names if (at_root and n in top_level) or n == "__pycache__" or n.endswith(".egg-info")}
    shutil.copytree(ROOT, src, ignore=ignore)
    _run(pip + [str(src)], env=env)
    return py, env, d


def test_declared_dependencies_only_import_and_run(fresh_env):
    py, env, d = fresh_env
    # none of the optional packages is there: this really is the declared set
    code = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % (OPTIONAL,)
    assert _run([str(py), "-c", code], env=env).stdout.strip() == "[]"
    out = _run([str(py), "-c", "import mesu_snn, mesu_snn.cli; print(mesu_snn.__file__)"], env=env, cwd=d)
    assert "site-packages" in out.stdout
    helptext = _run([str(py.parent / "mesu-snn"), "--help"], env=env, cwd=d).stdout
    for name in ("demo", "train", "plot", "inspect", "export"):
        assert name in helptext
    cfg = d / "tiny.toml"
    cfg.write_text(textwrap.dedent("""
        [data]
        dataset = "digits"
        train_per_task = 64
        test_per_task = 32
        [stream]
        kind = "permuted"
        n_tasks = 2
        batch_size = 16
        [encoder]
        kind = "current"
        num_steps = 4
        [model]
        hidden = [16]
        [rule]
        name = "mesu"
        [schedule]
        train_samples = 2
        eval_samples = 2
    """))
    _run([str(py.parent / "mesu-snn"), "train", str(cfg), "--out", str(d / "run")], env=env, cwd=d)
    assert (d / "run" / "metrics.json").is_file()


def test_event_data_without_the_extra_names_it(fresh_env):
    py, env, d = fresh_env
    f = d / "one_event.bin"
    f.write_bytes(bytes([3, 4, 0x80, 0, 10]))          # one N-MNIST event (5 bytes)
    code = ("import mesu_snn.datasets as D\n"
            "try:\n    D.read_nmnist_file(%r)\nexcept ImportError as e:\n    print(type(e).__name__, e)\n" % str(f))
    out = _run([str(py), "-c", code], env=env, cwd=d).stdout
    assert "MissingExtraError" in out and "mesu-snn[events]" in out
