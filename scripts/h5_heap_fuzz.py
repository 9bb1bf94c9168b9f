"""Zero bytes inside the global heap (GCOL) of one of our HDF5 files and read it with our reader;
a case with no answer within 10 s is a stall. Usage: heap_fuzz.py KIND FILE [step] [n_zero]"""
import sys, os, subprocess, select, time, struct
from pathlib import Path
kind, src = sys.argv[1], Path(sys.argv[2])
step = int(sys.argv[3]) if len(sys.argv) > 3 else 4
nz = int(sys.argv[4]) if len(sys.argv) > 4 else 35
data = src.read_bytes()
cases = []
i = data.find(b"GCOL")
while i >= 0:
    size = struct.unpack("<Q", data[i + 8:i + 16])[0]
    cases += [(o, nz) for o in range(i, min(i + size, len(data), i + int(os.environ.get("SPAN", "1e9").split(".")[0]) if "e" not in os.environ.get("SPAN", "") else len(data)), step)]
    i = data.find(b"GCOL", i + 4)
if "--child" in sys.argv:
    import warnings; warnings.simplefilter("ignore")
    from mesu_snn.errors import MesuError
    if kind == "nir":
        from mesu_snn.export.nir_export import from_nir as read
    elif kind == "trace":
        from mesu_snn.runs.trace import read_trace as read
    elif kind == "netx":
        from mesu_snn.export.netx import read_netx as read
    start = int(sys.argv[sys.argv.index("--child") + 1])
    import tempfile; tmp = Path(tempfile.gettempdir()) / f"m_{kind}_{os.getpid()}{src.suffix}"
    print("ready", flush=True)
    for j in range(start, len(cases)):
        o, n = cases[j]
        tmp.write_bytes(data[:o] + b"\0" * n + data[o + n:])
        try:
            read(tmp); r = "ok"
        except MesuError as e:
            r = "ourerr"
        except Exception as e:
            r = "other:" + type(e).__name__
        print(j, r, flush=True)
    tmp.unlink(); sys.exit(0)
res, j, stalls = {}, 0, []
t0 = time.time()
while j < len(cases):
    p = subprocess.Popen([sys.executable, __file__, *sys.argv[1:5], "--child", str(j)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    while True:
        if not select.select([p.stdout], [], [], 5)[0]:
            stalls.append(cases[j]); p.kill(); p.wait(); j += 1; break
        line = p.stdout.readline()
        if not line:
            p.wait(); j = len(cases) if p.returncode == 0 else j + 1
            if p.returncode: res[f"crash rc {p.returncode}"] = res.get(f"crash rc {p.returncode}", 0) + 1
            break
        k, r = line.split()
        res[r] = res.get(r, 0) + 1; j = int(k) + 1
print(f"{kind} {src.name}: {len(cases)} cases (zero {nz} bytes every {step} bytes of the global heaps), "
      f"{dict(sorted(res.items()))}, stalls {len(stalls)} at {stalls[:10]}, {time.time() - t0:.0f} s")
