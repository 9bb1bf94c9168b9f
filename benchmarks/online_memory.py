"""Memory and time of one update against the sequence length T: eligibility traces
(``mesu_online``) vs backpropagation through time (``mesu``), SpikingMLP 784-100-10, batch 1.

    python benchmarks/online_memory.py                     # T = 25, 100, 400, 1600; M = 4; ~3 min, 1 thread
    python benchmarks/online_memory.py --T 25 100 --iters 3 --out-dir /tmp/x
    python benchmarks/online_memory.py --T 25 100 400 --rules mesu_online:16 mesu mesu_online:16:zero \
        mesu:zero mesu_online:16:per_neuron_beta mesu:per_neuron_beta --name online_memory_synaptic

Every (rule, T) runs in a fresh subprocess (one thread) and reports

* ``peak_mib``: the peak of live CPU tensor memory during one update, above what was live before
  it (the online rule's reused trace buffers are freed first, so they count; torch.profiler with ``profile_memory=True``: every op's own allocations minus frees, in
  time order, summed; tracemalloc does not see torch's allocations);
* ``maxrss_delta_mib``: growth of the process's peak resident set (``resource.getrusage``) over
  the timed updates, after a warm-up update at T = 2 (coarser: allocator caching, page reuse);
* ``state_mib`` (online only): the trace state the rule holds, counted from its tensors;
* ``ms_per_update``: median over ``--iters`` updates (not under the profiler).

Network variants (``rule[:chunk][:variant]``): ``subtract`` (default: subtractive reset, one β,
the per-presynaptic-neuron trace x̄), ``zero`` (``reset="zero"``: the per-synapse trace x̃ zeroed
at the postsynaptic spike, (M, B, J, I)) and ``per_neuron_beta`` (the hidden layer's β a fixed
(J,) tensor, 0.8..0.95: the per-synapse trace filtered with β_j, (B, J, I) for the input layer).
Both per-synapse variants always take the per-step trace recurrence. BPTT rows on the same
variant use the same network.

Input: Bernoulli(0.1) spikes on the 784 inputs. BPTT gets the whole (T, 1, 784) tensor (it needs
it); the online rule gets the steps one at a time from a generator, so nothing of size T exists.
Writes ``results/NAME.json`` and ``.md`` (``--name``, default ``online_memory``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = [784, 100, 10]


def _steps(T, g, p=0.1):
    import torch
    for _ in range(T):
        yield (torch.rand(1, SIZES[0], generator=g) < p).float()


def _peak_live_bytes(fn) -> int:
    """Peak of (allocated − freed) CPU bytes while ``fn()`` runs, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # every op's own (self) allocations minus frees, at its start, plus the frees outside ops
    # ("[memory]" events), in time order: the live-bytes curve (intra-op transients not resolved)
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events())
    live = peak = 0
    for _, b in events:
        live += b
        peak = max(peak, live)
    return peak


VARIANTS = ("subtract", "zero", "per_neuron_beta")


def _network(variant: str):
    import torch
    import mesu_snn as ms
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    net = ms.SpikingMLP(SIZES, beta=0.9, init="authors", reset="zero" if variant == "zero" else "subtract")
    if variant == "per_neuron_beta":
        old = net.neurons[0]
        net.neurons[0] = ms.LIF(beta=torch.linspace(0.8, 0.95, SIZES[1]), threshold=old.params.threshold,
                                reset=old.params.reset, surrogate=old.surrogate)
    return net


def parse_spec(spec: str) -> tuple[str, str, str]:
    """"rule[:chunk][:variant]" -> (rule, chunk, variant); e.g. "mesu:zero", "mesu_online:16:zero"."""
    rule, *rest = spec.split(":")
    chunk = rest.pop(0) if rest and rest[0].isdigit() else "16"
    variant = rest.pop(0) if rest else "subtract"
    if rest or variant not in VARIANTS:
        raise ValueError(f"bad rule spec {spec!r}: rule[:chunk][:variant], variant one of {VARIANTS}")
    return rule, chunk, variant


def child(rule_name: str, T: int, samples: int, iters: int, chunk: int = 16, variant: str = "subtract") -> dict:
    import resource

    import torch
    sys.path.insert(0, str(ROOT))
    import mesu_snn as ms
    from mesu_snn.rules import make_rule
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = _network(variant)
    hp = {"chunk": chunk} if rule_name == "mesu_online" else {}
    rule = make_rule(rule_name, net, memory=300_000.0, sigma_prior=0.1, **hp)
    noise = torch.Generator().manual_seed(1)
    data = torch.Generator().manual_seed(2)
    y = torch.tensor([3])

    def update(t):
        if rule.online:
            rule.train_step(_steps(t, data), y, samples=samples, generator=noise)
        else:
            x = torch.stack(list(_steps(t, data)))
            out = net(x, samples=samples, generator=noise)
            loss = rule.loss(out, y)
            rule.zero_grad()
            loss.backward()
            rule.step()

    update(2)                                             # warm-up: kernels, allocator
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        update(T)
        times.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if getattr(rule, "online", False):
        rule.engine._buffers.clear()         # count the reused trace buffers inside the update too
    peak = _peak_live_bytes(lambda: update(T))
    times.sort()
    name = f"mesu_online (chunk {chunk})" if rule_name == "mesu_online" else rule_name
    if variant != "subtract":
        name += {"zero": ", reset zero", "per_neuron_beta": ", per-neuron β"}[variant]
    row = {"rule": name, "variant": variant, "T": T, "samples": samples, "batch": 1, "iters": iters,
           "ms_per_update": 1e3 * times[len(times) // 2], "peak_mib": peak / 2**20,
           "maxrss_delta_mib": (rss1 - rss0) / 1024.0}
    if getattr(rule, "online", False):
        n = sum(torch.Size(s).numel() for s in rule.engine.state_shapes.values())
        row["state_mib"] = n * 4 / 2**20
        row["state_tensors"] = len(rule.engine.state_shapes)
    return row


def _markdown(data: dict) -> str:
    lines = [f"# Online (eligibility traces) vs BPTT MESU: memory and time per update, {data['date']}", "",
             f"SpikingMLP {'-'.join(map(str, SIZES))}, batch 1, M = {data['samples']} weight samples, 1 thread, "
             f"{data['machine']}. `{data.get('command', 'python benchmarks/online_memory.py')}` "
             f"({data['wall_s']:.0f} s).", "",
             "| rule | T | ms / update | peak live tensors (MiB) | Δ max RSS (MiB) | trace state (MiB) |",
             "|---|---|---|---|---|---|"]
    for r in data["results"]:
        st = f"{r['state_mib']:.2f}" if "state_mib" in r else "–"
        lines.append(f"| {r['rule']} | {r['T']} | {r['ms_per_update']:.1f} | {r['peak_mib']:.2f} | "
                     f"{r['maxrss_delta_mib']:.1f} | {st} |")
    lines += ["", "Peak live tensors: torch.profiler memory events during one update, above what was live "
              "before it. BPTT's grows with T (it stores the sequence for backward); the online rule's "
              "does not (its traces are O(1) in T). Absolute times drift on a shared machine."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[25, 100, 400, 1600])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rules", nargs="+", default=["mesu_online:1", "mesu_online:16", "mesu"],
                    help="rule[:chunk][:variant] (mesu_online's chunk: 1 = one rank-1 trace update per step; "
                         f"variant: one of {VARIANTS}, default subtract)")
    ap.add_argument("--max-t-per-step", type=int, default=400, help="largest T for the chunk-1 rows")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--name", default="online_memory", help="result file name (NAME.json, NAME.md)")
    ap.add_argument("--child", nargs=6, metavar=("RULE", "T", "M", "ITERS", "CHUNK", "VARIANT"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], *map(int, a.child[1:5]), variant=a.child[5])))
        return 0
    for spec in a.rules:
        try:
            parse_spec(spec)
        except ValueError as e:
            ap.error(f"--rules: {e}")
    t0 = time.time()
    results = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for T in a.T:
        for spec in a.rules:
            rule, chunk, variant = parse_spec(spec)
            if chunk == "1" and T > a.max_t_per_step:
                continue                       # one rank-1 update per step: slow in PyTorch, same numbers
            out = subprocess.run([sys.executable, __file__, "--child", rule, str(T), str(a.samples), str(a.iters),
                                  chunk, variant],
                                 capture_output=True, text=True, env=env, check=False)
            if out.returncode:
                raise RuntimeError(f"{rule} T={T} failed:\n{out.stderr[-2000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            results.append(row)
    data = {"date": dt.date.today().isoformat(), "samples": a.samples, "sizes": SIZES,
            "command": "python benchmarks/online_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
            "torch": __import__("torch").__version__, "wall_s": time.time() - t0, "results": results}
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from mesu_snn.runs.atomic import atomic_write_bytes
    atomic_write_bytes(out_dir / f"{a.name}.json", (json.dumps(data, indent=1) + "\n").encode())
    atomic_write_bytes(out_dir / f"{a.name}.md", _markdown(data).encode())
    print(_markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
