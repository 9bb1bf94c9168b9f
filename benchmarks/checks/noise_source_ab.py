"""Does the compiled normal generator change learning? The paper protocol's ANN (experiments/paper_pmnist.py,
MESU, 784-50-10, batch 1) on 2 tasks x 1,500 images, the same code with only the noise source swapped.

    python benchmarks/checks/noise_source_ab.py philox 0,1,2,3,4,5,6,7,8,9,10,11
    python benchmarks/checks/noise_source_ab.py torch  0,1,2,3,4,5,6,7,8,9,10,11

Prints one line per seed: the accuracy matrix. Measured 2026-12-03 (2-core AMD EPYC VM): mean task-0
accuracy after task 0 over seeds 0-11: 0.7909 (philox) vs 0.7902 (torch.randn).
Data: $MESU_SNN_DATA (else ../shared/data beside the repository).
"""
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "experiments"), str(REPO)]
torch.set_num_threads(1)
mode, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
if mode not in ("philox", "torch"):
    raise SystemExit("mode must be philox or torch")
if mode == "torch":
    def randn(shape, generator=None, dtype=None, device=None):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    for mod in ("mesu_snn.synapses", "mesu_snn.kernels.local_linear", "mesu_snn.multistream"):
        importlib.import_module(mod).standard_normal = randn
import paper_pmnist as pp  # noqa: E402

root = os.environ.get("MESU_SNN_DATA", str(REPO.parent / "shared" / "data"))
with tempfile.TemporaryDirectory() as d:
    for s in seeds:
        out = str(Path(d) / f"{mode}_{s}.json")
        pp.main(["--rule", "mesu", "--model", "ann", "--seed", str(s), "--tasks", "2", "--train-per-task", "1500",
                 "--test-per-task", "1000", "--log-every", "0", "--data-root", root, "--out", out])
        print(mode, s, json.loads(Path(out).read_text())["acc"], flush=True)
