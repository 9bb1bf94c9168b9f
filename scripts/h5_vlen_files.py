"""Which of our HDF5 formats hold variable-length data (datasets or attributes), and does
zeroing bytes inside their global heaps ("GCOL") make the readers stall?"""
import sys, os, subprocess, time
from pathlib import Path
import h5py, numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import mesu_snn as ms
from mesu_snn.export.nir_export import to_nir
from mesu_snn.runs.recorder import SigmaRecorder
out = Path(sys.argv[1]); out.mkdir(exist_ok=True)

def vlen_objects(path):
    found = []
    def attrs(name, obj):
        for k in obj.attrs.keys():
            aid = h5py.h5a.open(obj.id, k.encode())
            t = aid.get_type()
            if isinstance(t, h5py.h5t.TypeVlenID) or (isinstance(t, h5py.h5t.TypeStringID) and t.is_variable_str()):
                found.append(f"attr {name}@{k}")
    with h5py.File(path, "r") as f:
        attrs("/", f)
        def visit(n, o):
            attrs(n, o)
            if isinstance(o, h5py.Dataset):
                t = o.id.get_type()
                if isinstance(t, h5py.h5t.TypeVlenID) or (isinstance(t, h5py.h5t.TypeStringID) and t.is_variable_str()):
                    found.append(f"dataset {n}")
        f.visititems(visit)
    return found

torch.manual_seed(1)
net = ms.SpikingMLP([5, 4, 3], reset="zero")
for lif in net.neurons: lif.reset_delay = False
nir_p = to_nir(net, out / "src.nir")
net2 = ms.SpikingMLP([6, 5, 3]); opt = ms.MESU(net2, memory=50, sigma_prior=0.1)
tr_p = out / "sigma_trace.h5"
rec = SigmaRecorder(tr_p, every=2, n_tracked=3, seed=0); rec.on_start(net2, opt, {"rule": "mesu"})
for u in range(1, 5):
    loss = ms.nll_loss(net2(torch.rand(4, 3, 6), samples=2), torch.randint(0, 3, (3,)))
    opt.zero_grad(); loss.backward(); opt.step(); rec.on_update(u, net2, opt)
rec.on_end(net2, opt)
netx_p = out / "net.net"
try:
    ms.to_netx(ms.SpikingMLP([5, 4, 3]), netx_p)
except Exception as e:
    print("netx export failed:", type(e).__name__, str(e)[:200]); netx_p = None
files = {"nir": nir_p, "trace": tr_p}
if netx_p: files["netx"] = netx_p
for k, p in files.items():
    v = vlen_objects(p)
    data = Path(p).read_bytes()
    print(f"{k}: {Path(p).stat().st_size} bytes, {len(v)} vlen objects: {v[:8]}{' ...' if len(v) > 8 else ''}; "
          f"GCOL heaps at {[i for i in range(len(data)) if data[i:i+4] == b'GCOL']}")
