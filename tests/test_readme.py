"""Every Python block of the README runs as written (in order, in one namespace, as a reader
pasting them into one session would)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    pytest.importorskip("snntorch")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    ns: dict = {}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"README.md python block {i + 1}", "exec"), ns)
        except Exception as e:  # pragma: no cover - the message says which block
            raise AssertionError(f"README python block {i + 1} fails: {type(e).__name__}: {e}") from e
    assert ns["logits"].shape == (8, 32, 10)
    # the snnTorch tutorial-style and Norse networks: one output per MC sample, trained by MESU
    assert ns["t_logits"].shape == ns["n_logits"].shape == (8, 32, 10)
    assert all(g["step"] == 1 for opt in (ns["opt_t"], ns["opt_n"]) for g in opt.param_groups)
