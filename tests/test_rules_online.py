"""The eligibility-trace rules (mesu_online, sgd_online): gradients equal BPTT's for one hidden
LIF layer, σ gradient = ε × the weight gradient per sample, O(1)-in-T state of the documented
size, the same MESU step as the optimizer, learning a small task, config/trainer wiring."""
import pytest
import torch

import mesu_snn as ms
from mesu_snn.rules import make_rule
from mesu_snn.rules.online import FEEDBACKS, OnlineEligibility, OnlineMESURule


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny per-step ops: one thread (on a shared 2-core machine OpenMP sync dominates otherwise)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _net(sizes=(20, 15, 5), seed=0, **kw):
    torch.manual_seed(seed)
    return ms.SpikingMLP(list(sizes), beta=0.8, threshold=0.5, **kw).double()


def _data(sizes, T=12, B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, B, sizes[0], generator=g) < 0.3).double() * 1.5
    return x, torch.randint(0, sizes[-1], (B,), generator=g)


def _bptt_grads(net, x, y, M, seed):
    for p in net.parameters():
        p.grad = None
    out = net(x, samples=M, generator=torch.Generator().manual_seed(seed))
    ms.nll_loss(out, y).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = None
    return out.detach(), grads


def test_mu_and_sigma_gradients_equal_bptt_for_one_hidden_layer():
    sizes = (20, 15, 5)
    net = _net(sizes)
    x, y = _data(sizes)
    out_ref, ref = _bptt_grads(net, x, y, M=4, seed=7)
    eng = OnlineEligibility(net)
    w, eps = eng.sample_weights(4, torch.Generator().manual_seed(7))
    out, grads = eng.run(x, y, w)
    eng.set_grads(grads, eps)
    assert torch.allclose(out, out_ref, atol=1e-12)
    for n, p in net.named_parameters():
        assert ref[n].abs().max() > 1e-4, n
        assert torch.allclose(p.grad, ref[n], rtol=1e-5, atol=1e-9), n


def test_sigma_gradient_is_noise_times_weight_gradient_per_sample():
    """Per sample m (M = 1 runs): autograd's ∂C/∂σ equals ε ⊙ ∂C/∂w, and so do the traces'."""
    sizes = (10, 8, 3)
    net = _net(sizes)
    x, y = _data(sizes, T=8, B=2)
    eng = OnlineEligibility(net)
    for seed in range(3):
        w, eps = eng.sample_weights(1, torch.Generator().manual_seed(seed))
        _, grads = eng.run(x, y, w)
        _, ref = _bptt_grads(net, x, y, M=1, seed=seed)
        eng.set_grads(grads, eps)
        for i, layer in enumerate(net.layers):
            ew = eps[i][0, :, :layer.in_features]
            assert torch.allclose(layer.weight_sigma.grad, ew * grads[i][0, :, :layer.in_features], atol=1e-12)
            assert torch.allclose(ref[f"layers.{i}.weight_sigma"], ew * ref[f"layers.{i}.weight_mu"], atol=1e-12)
            assert torch.allclose(layer.weight_sigma.grad, ref[f"layers.{i}.weight_sigma"], rtol=1e-5, atol=1e-10)


def test_deep_symmetric_signal_is_aligned_with_bptt():
    """Two hidden layers: the first layer's symmetric signal is an approximation (rate-based);
    measured here: cosine with the BPTT gradient > 0.8; the layers above are exact."""
    sizes = (20, 15, 12, 5)
    net = _net(sizes)
    x, y = _data(sizes, T=15)
    _, ref = _bptt_grads(net, x, y, M=2, seed=3)
    eng = OnlineEligibility(net)
    w, eps = eng.sample_weights(2, torch.Generator().manual_seed(3))
    eng.set_grads(eng.run(x, y, w)[1], eps)
    a, b = net.layers[0].weight_mu.grad, ref["layers.0.weight_mu"]
    assert float((a * b).sum() / (a.norm() * b.norm())) > 0.8
    assert torch.allclose(net.layers[1].weight_mu.grad, ref["layers.1.weight_mu"], rtol=1e-5, atol=1e-9)


def test_state_is_independent_of_T_and_as_documented():
    """Per synapse: ē and Ē, M·B each (bias column included); per neuron: v, ψ̄ (M·B);
    per presynaptic neuron: x̄ (B for the shared input, M·B above); output: u, ū, Σū, Σu."""
    sizes = (20, 15, 5)
    net = _net(sizes)
    eng = OnlineEligibility(net)
    M, B = 3, 2
    shapes = {}
    for T in (5, 40):
        x, y = _data(sizes, T=T, B=B)
        eng.run(x, y, eng.sample_weights(M)[0])
        shapes[T] = dict(eng.state_shapes)
    assert shapes[5] == shapes[40]
    s = shapes[5]
    J, I, K = 15, 20 + 1, 5
    assert s["ebar0"] == s["ebar_sum0"] == (M, B, J, I)
    assert s["xbar0"] == (B, I)
    assert s["v0"] == s["psi_sum0"] == (M, B, J)
    assert s["ubar"] == s["ubar_sum"] == (M, B, J + 1)
    assert s["u"] == s["z_sum"] == (M, B, K)
    per_synapse = sum(torch.Size(v).numel() for k, v in s.items() if k.startswith("ebar"))
    assert per_synapse == 2 * M * B * J * I
    assert len(s) == 9


def test_random_and_local_feedback_run_and_differ():
    sizes = (20, 15, 5)
    x, y = _data(sizes)
    grads = {}
    for fb in ("symmetric", "random", "local"):
        net = _net(sizes)
        eng = OnlineEligibility(net, feedback=fb, feedback_seed=2)
        out, g = eng.run(x, y, eng.mean_weights())
        assert torch.isfinite(g[0]).all()
        grads[fb] = g
    assert not torch.allclose(grads["random"][0], grads["symmetric"][0])
    assert not torch.allclose(grads["local"][0], grads["random"][0])
    assert torch.equal(grads["random"][1], grads["symmetric"][1])        # the output layer: its true error
    state = eng.extra_state()
    assert state["feedback"] == "local" and state["feedback_matrices"][0].shape == (5, 15)


def test_online_mesu_step_is_the_optimizers_mesu_update():
    """rule.train_step = traces' gradients + the MESU optimizer's step (functional.mesu.mesu_update)."""
    from mesu_snn.functional.mesu import mesu_update
    sizes = (20, 15, 5)
    net = _net(sizes)
    x, y = _data(sizes)
    rule = make_rule("mesu_online", net, memory=1000.0, sigma_prior=0.2)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    rule.gradients(x, y, 2, torch.Generator().manual_seed(0))
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    rule.zero_grad()
    net.load_state_dict(before, strict=False)
    rule.train_step(x, y, 2, torch.Generator().manual_seed(0))
    for layer_name in ("layers.0.weight", "layers.1.bias"):
        mu, sig = mesu_update(before[layer_name + "_mu"], before[layer_name + "_sigma"], grads[layer_name + "_mu"],
                              grads[layer_name + "_sigma"], memory=1000.0, sigma_prior=0.2, batch_size=len(y))
        assert torch.allclose(dict(net.named_parameters())[layer_name + "_mu"], mu, atol=1e-12)
        assert torch.allclose(dict(net.named_parameters())[layer_name + "_sigma"], sig, atol=1e-12)


def _blobs(n, T=10, d=16, k=3, seed=0):
    """k classes of rate-coded inputs, each class firing its own block of d/k inputs more often."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    p = torch.full((n, d), 0.05)
    for c in range(k):
        p[y == c, c * (d // k):(c + 1) * (d // k)] = 0.6
    x = (torch.rand(T, n, d, generator=g) < p).float()
    return x, y


@pytest.mark.parametrize("name,hp", [("mesu_online", dict(memory=2000.0, sigma_prior=0.3)),
                                     ("sgd_online", dict(lr=0.2)),
                                     ("mesu_online", dict(memory=2000.0, sigma_prior=0.3, feedback="random"))])
def test_online_rule_learns_a_small_task(name, hp):
    torch.manual_seed(0)
    net = ms.SpikingMLP([16, 32, 3], beta=0.8, init="authors")
    rule = make_rule(name, net, **hp)
    x, y = _blobs(300)
    g = torch.Generator().manual_seed(0)
    for i in range(300):                    # batch 1, one update per sample
        rule.train_step(x[:, i:i + 1], y[i:i + 1], samples=2 if rule.bayesian else 1, generator=g)
    xt, yt = _blobs(300, seed=1)
    ms.set_mode(net, "mean")
    with torch.no_grad():
        acc = float((net(xt, samples=1)[0].argmax(-1) == yt).float().mean())
    assert acc > 0.8, acc                   # chance is 1/3


def test_unsupported_models_are_refused():
    with pytest.raises(ValueError, match="estimator='weights'"):
        OnlineMESURule(ms.SpikingMLP([4, 3, 2], estimator="local"))
    net = ms.SpikingMLP([4, 3, 2])
    net.neurons[1] = ms.LIF(beta=torch.tensor([0.9, 0.8]))
    with pytest.raises(ValueError, match="output layer"):
        OnlineMESURule(net)
    net.neurons[1] = ms.LIF(beta=torch.tensor([0.8, 0.8]))       # all equal: one scalar
    OnlineMESURule(net)
    net.neurons[0] = ms.LIF(beta=0.9, learn_beta=True)
    with pytest.raises(ValueError, match="learn_beta"):
        OnlineMESURule(net)
    with pytest.raises(ValueError, match="trace_bits"):
        OnlineEligibility(ms.SpikingMLP([4, 3, 2]), trace_bits=1)
    with pytest.raises(ValueError, match="SpikingMLP"):
        OnlineMESURule(ms.BayesMLP([4, 3, 2]))
    with pytest.raises(ValueError, match="feedback"):
        make_rule("mesu_online", ms.SpikingMLP([4, 3, 2]), feedback="nope")


def test_local_estimator_is_refused_with_the_reason():
    """estimator="local" never draws the per-synapse ε, so ∂C/∂σ = ε·∂C/∂w cannot be formed: the
    message says so (for both rules)."""
    for name in ("mesu_online", "sgd_online"):
        with pytest.raises(ValueError) as e:
            make_rule(name, ms.SpikingMLP([4, 3, 2], estimator="local"))
        msg = str(e.value)
        assert "'local'" in msg and "ε·∂C/∂w" in msg and "per-synapse draw ε" in msg and "never draws" in msg
        assert "estimator='weights'" in msg


def test_config_and_trainer_run_the_online_rules(tmp_path):
    from mesu_snn.build import build_trainer
    from mesu_snn.config import ConfigError, parse_config
    raw = {"seed": 0, "data": {"dataset": "digits", "train_per_task": 40, "test_per_task": 30},
           "stream": {"kind": "permuted", "n_tasks": 2, "batch_size": 1},
           "encoder": {"kind": "current", "num_steps": 5}, "model": {"kind": "mlp", "hidden": [16]},
           "rule": {"name": "mesu_online", "memory": 1000.0, "feedback": "random", "feedback_seed": 3},
           "schedule": {"train_samples": 2, "eval_samples": 2, "ood": False}}
    m = build_trainer(parse_config(raw)).fit()
    assert m["rule"] == "mesu_online" and m["rule_hyperparameters"]["feedback"] == "random"
    assert m["updates"] == 80 and not m["diverged"]
    raw["rule"] = {"name": "sgd_online", "lr": 0.05}
    assert build_trainer(parse_config(raw)).fit()["rule"] == "sgd_online"
    raw["rule"] = {"name": "mesu_online", "feedback": "sideways"}
    with pytest.raises(ConfigError, match="rule.feedback"):
        parse_config(raw)
    raw["rule"] = {"name": "mesu_online", "feedback_seed": -1}
    with pytest.raises(ConfigError, match="rule.feedback_seed"):
        parse_config(raw)


@pytest.mark.parametrize("T", [1, 7, 16, 37])
def test_chunked_traces_equal_per_step_traces(T):
    sizes = (20, 15, 12, 5)
    net = _net(sizes)
    x, y = _data(sizes, T=T)
    per_step = OnlineEligibility(net, chunk=1)
    w, _ = per_step.sample_weights(3, torch.Generator().manual_seed(0))
    out1, g1 = per_step.run(x, y, w)
    for chunk in (4, 16):
        out, g = OnlineEligibility(net, chunk=chunk).run(x, y, w)
        assert torch.allclose(out, out1, atol=1e-12)
        for a, b in zip(g, g1):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 16])
def test_per_step_trace_path_equals_the_chunked_path(chunk):
    """The per-step recurrence that the fixed-point traces take (here with 32-bit grids, float to
    ~1e-9 of the range) gives the chunked float path's gradients: the two paths apply the same
    maths (nothing extra per step); only the rounding differs."""
    sizes = (20, 15, 12, 5)
    net = _net(sizes)
    x, y = _data(sizes, T=23)
    ref_eng = OnlineEligibility(net, chunk=16)
    w, _ = ref_eng.sample_weights(3, torch.Generator().manual_seed(2))
    out_ref, g_ref = ref_eng.run(x, y, w)
    eng = OnlineEligibility(net, chunk=chunk, trace_bits=32)
    out, g = eng.run(x, y, w)
    assert torch.allclose(out, out_ref, atol=1e-12)         # the forward pass does not see the traces
    for a, b in zip(g, g_ref):
        assert b.abs().max() > 1e-4
        assert float((a - b).norm() / b.norm()) < 1e-7


def test_steps_from_an_iterable_and_a_single_layer_net():
    """Steps may come one at a time (nothing of size T exists); a net without hidden layer works."""
    for sizes in ((20, 15, 5), (20, 5)):
        net = _net(sizes)
        x, y = _data(sizes, T=21)
        _, ref = _bptt_grads(net, x, y, M=2, seed=5)
        eng = OnlineEligibility(net, chunk=8)
        w, eps = eng.sample_weights(2, torch.Generator().manual_seed(5))
        out_t, g_t = eng.run(x, y, w)
        out_i, g_i = eng.run(iter(x), y, w)
        assert torch.allclose(out_t, out_i, atol=1e-12)
        eng.set_grads(g_i, eps)
        for n, p in net.named_parameters():
            assert torch.allclose(p.grad, ref[n], rtol=1e-5, atol=1e-9), (sizes, n)


def test_checkpoint_resume_of_an_online_run_is_exact(tmp_path):
    """A run that crashes after update 25 and is resumed from its last checkpoint (update 20)
    ends with the same μ, σ and metrics as an uninterrupted run."""
    from mesu_snn.build import build_tasks
    from mesu_snn.callbacks import Callback
    from mesu_snn.config import parse_config
    from mesu_snn.runs.callbacks import build_run

    class Crash(Callback):
        def on_step(self, trainer, row):
            if trainer.update == 25:
                raise KeyboardInterrupt("simulated kill")

    raw = {"seed": 0, "data": {"dataset": "digits", "train_per_task": 20, "test_per_task": 10},
           "stream": {"kind": "permuted", "n_tasks": 2, "batch_size": 1},
           "encoder": {"kind": "current", "num_steps": 4}, "model": {"kind": "mlp", "hidden": [8]},
           "rule": {"name": "mesu_online", "memory": 500.0, "feedback": "local"},
           "schedule": {"train_samples": 2, "eval_samples": 2, "ood": False, "checkpoint_every": 10}}
    cfg = parse_config(raw)
    tasks = build_tasks(cfg)
    full = build_run(cfg, tmp_path / "full", tasks=tasks)
    m_full = full.fit()
    with pytest.raises(KeyboardInterrupt):
        build_run(cfg, tmp_path / "part", callbacks=[Crash()], tasks=tasks).fit()
    from mesu_snn.runs.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["position"] == 20
    part = build_run(cfg, tmp_path / "part", tasks=tasks)
    m_part = part.fit(resume=True)
    for (n, a), b in zip(full.model.state_dict().items(), part.model.state_dict().values()):
        assert torch.equal(a, b), n
    assert m_part["accuracy_matrix"] == m_full["accuracy_matrix"]
    assert torch.equal(part.rule.engine.feedback_matrices[0], full.rule.engine.feedback_matrices[0])


def test_fixed_point_variant_keeps_mu_sigma_on_the_grid_and_learns():
    torch.manual_seed(0)
    net = ms.SpikingMLP([16, 32, 3], beta=0.8, init="authors")
    rule = make_rule("mesu_online", net, memory=2000.0, sigma_prior=0.3, fixed_point_bits=6)
    x, y = _blobs(200)
    g = torch.Generator().manual_seed(0)
    for i in range(200):
        rule.train_step(x[:, i:i + 1], y[i:i + 1], samples=2, generator=g)
    for mu, sig, smu, ssig in rule._grids:
        for t, step in ((mu, smu), (sig, ssig)):
            k = t.detach().double() / step
            assert torch.allclose(k, k.round(), atol=1e-4) and k.abs().max() <= 31
        assert float(sig.detach().min()) >= ssig * (1 - 1e-6)
    xt, yt = _blobs(300, seed=1)
    ms.set_mode(net, "mean")
    with torch.no_grad():
        acc = float((net(xt, samples=1)[0].argmax(-1) == yt).float().mean())
    assert acc > 0.8, acc
    with pytest.raises(ValueError, match="fixed_point_bits"):
        make_rule("mesu_online", ms.SpikingMLP([4, 3, 2]), fixed_point_bits=1)


def _cos(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("reset_delay", [True, False])
@pytest.mark.parametrize("sizes", [(20, 15, 5), (20, 15, 12, 5)])
def test_zero_reset_equals_bptt_with_the_reset_detached(reset_delay, sizes):
    """reset="zero": the trace is per synapse and zeroed at the postsynaptic spike (the detached
    reset keeps its multiplicative path (1 − s)); the layer under the readout is exact."""
    net = _net(sizes, reset="zero", reset_delay=reset_delay)
    x, y = _data(sizes, T=14)
    out_ref, ref = _bptt_grads(net, x, y, M=2, seed=4)
    eng = OnlineEligibility(net, chunk=5)
    w, eps = eng.sample_weights(2, torch.Generator().manual_seed(4))
    out, grads = eng.run(x, y, w)
    eng.set_grads(grads, eps)
    assert torch.allclose(out, out_ref, atol=1e-12)
    exact = [f"layers.{i}.{n}" for i in (len(sizes) - 3, len(sizes) - 2) for n in
             ("weight_mu", "weight_sigma", "bias_mu", "bias_sigma")]
    for n, p in net.named_parameters():
        assert ref[n].abs().max() > 1e-4, n
        if n in exact:
            assert torch.allclose(p.grad, ref[n], rtol=1e-5, atol=1e-9), n
        else:                                                   # the deep symmetric signal: approximate
            assert _cos(p.grad, ref[n]) > 0.7, n
    assert eng.state_shapes["xbar0"] == (2, 3, 15, 21)          # per synapse (M, B, J, I + bias)


def test_count_readout_output_layer_exact_hidden_layer_rate_approximation():
    """readout="count": the output layer's traces give BPTT's gradient exactly; the hidden layer
    gets δ_k Σ_t ψ_k(t) through Wᵀ (exact when ψ is constant: the straight-through surrogate)."""
    sizes = (20, 15, 5)
    for surrogate, exact_hidden in ((ms.functional.surrogate.Heaviside(), True), ("fast_sigmoid", False)):
        for reset in ("subtract", "zero"):
            net = _net(sizes, readout="count", surrogate=surrogate, reset=reset)
            x, y = _data(sizes, T=12, seed=2)
            out_ref, ref = _bptt_grads(net, x, y, M=2, seed=6)
            eng = OnlineEligibility(net)
            w, eps = eng.sample_weights(2, torch.Generator().manual_seed(6))
            out, grads = eng.run(x, y, w)
            eng.set_grads(grads, eps)
            assert torch.allclose(out, out_ref, atol=1e-12)
            for n, p in net.named_parameters():
                assert ref[n].abs().max() > 1e-4, (surrogate, reset, n)
                if n.startswith("layers.1") or (exact_hidden and reset == "subtract"):
                    assert torch.allclose(p.grad, ref[n], rtol=1e-5, atol=1e-9), (surrogate, reset, n)
                else:
                    assert _cos(p.grad, ref[n]) > 0.7, (surrogate, reset, n, _cos(p.grad, ref[n]))   # measured 0.78-0.9
    net = _net((20, 5), readout="count")                          # no hidden layer: exact
    x, y = _data((20, 5), T=9)
    _, ref = _bptt_grads(net, x, y, M=2, seed=1)
    eng = OnlineEligibility(net)
    w, eps = eng.sample_weights(2, torch.Generator().manual_seed(1))
    eng.set_grads(eng.run(x, y, w)[1], eps)
    for n, p in net.named_parameters():
        assert torch.allclose(p.grad, ref[n], rtol=1e-5, atol=1e-9), n


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_per_neuron_beta_equals_bptt(reset):
    """A fixed β per hidden neuron: the trace x̃_ji is filtered with the postsynaptic β_j (per
    synapse); exact for the layer under the readout, and the deep signal uses γ/(1 − β_j)."""
    sizes = (20, 15, 12, 5)
    net = _net(sizes, reset=reset)
    for i, j in enumerate(sizes[1:-1]):
        old = net.neurons[i]
        net.neurons[i] = ms.LIF(beta=torch.linspace(0.3, 0.97, j), threshold=0.5, reset=reset,
                                surrogate=old.surrogate).double()
    x, y = _data(sizes, T=13)
    out_ref, ref = _bptt_grads(net, x, y, M=2, seed=8)
    eng = OnlineEligibility(net, chunk=4)
    w, eps = eng.sample_weights(2, torch.Generator().manual_seed(8))
    out, grads = eng.run(x, y, w)
    eng.set_grads(grads, eps)
    assert torch.allclose(out, out_ref, atol=1e-12)
    for n, p in net.named_parameters():
        assert ref[n].abs().max() > 1e-4, n
        if n.startswith(("layers.1", "layers.2")):
            assert torch.allclose(p.grad, ref[n], rtol=1e-5, atol=1e-9), n
        else:                  # the deep rate approximation; measured cos 0.52 (zero reset, σ) to 0.96
            assert _cos(p.grad, ref[n]) > 0.45, (n, _cos(p.grad, ref[n]))
    shared = (3, 15, 21) if reset == "subtract" else (2, 3, 15, 21)   # input shared by the samples
    assert eng.state_shapes["xbar0"] == shared and eng.state_shapes["xbar1"] == (2, 3, 12, 16)


def test_fixed_point_traces_are_unbiased_and_converge_to_float():
    """trace_bits: x̄, ē on b-bit grids with stochastic rounding; 16 bits is close to float, the
    mean over rounding draws of an 8-bit gradient approaches the float one (unbiased rounding)."""
    sizes = (20, 15, 5)
    net = _net(sizes)
    x, y = _data(sizes, T=10)
    w = OnlineEligibility(net).sample_weights(2, torch.Generator().manual_seed(0))[0]
    _, ref = OnlineEligibility(net).run(x, y, w)
    e16 = OnlineEligibility(net, trace_bits=16)
    _, g16 = e16.run(x, y, w)
    assert len(e16.trace_steps) == 1 and all(a > 0 and b > 0 for a, b in e16.trace_steps)
    assert float((g16[0] - ref[0]).norm() / ref[0].norm()) < 1e-2
    e8 = OnlineEligibility(net, trace_bits=8)
    runs = [e8.run(x, y, w)[1][0] for _ in range(40)]
    one = float((runs[0] - ref[0]).norm() / ref[0].norm())
    mean = float((torch.stack(runs).mean(0) - ref[0]).norm() / ref[0].norm())
    assert one > 1e-3 and mean < one / 2, (one, mean)
    assert e8.extra_state()["trace_steps"] == [list(t) for t in e8.trace_steps]
    fresh = OnlineEligibility(net, trace_bits=8)
    fresh.load_extra_state(e8.extra_state())
    a, b = fresh.run(x, y, w)[1][0], e8.run(x, y, w)[1][0]
    assert torch.equal(a, b)                                    # steps and rounding stream restored


def test_fixed_point_traces_learn_a_small_task():
    torch.manual_seed(0)
    net = ms.SpikingMLP([16, 32, 3], beta=0.8, init="authors")
    rule = make_rule("mesu_online", net, memory=2000.0, sigma_prior=0.3, trace_bits=8)
    x, y = _blobs(200)
    g = torch.Generator().manual_seed(0)
    for i in range(200):
        rule.train_step(x[:, i:i + 1], y[i:i + 1], samples=2, generator=g)
    xt, yt = _blobs(300, seed=1)
    ms.set_mode(net, "mean")
    with torch.no_grad():
        acc = float((net(xt, samples=1)[0].argmax(-1) == yt).float().mean())
    assert acc > 0.8, acc
    assert rule.hyperparameters["trace_bits"] == 8


def test_count_readout_with_random_and_local_feedback():
    """The output layer's gradient is its true error whatever the feedback; random feedback sends
    δ_k Σ_t ψ_k(t) through B, local feedback uses the per-layer readouts (unchanged)."""
    sizes = (20, 15, 12, 5)
    x, y = _data(sizes)
    grads = {}
    for fb in FEEDBACKS:
        net = _net(sizes, readout="count")
        eng = OnlineEligibility(net, feedback=fb, feedback_seed=1)
        _, g = eng.run(x, y, eng.mean_weights())
        assert all(torch.isfinite(t).all() for t in g)
        grads[fb] = g
    assert torch.equal(grads["random"][2], grads["symmetric"][2]) and torch.equal(grads["local"][2], grads["symmetric"][2])
    assert not torch.allclose(grads["random"][1], grads["symmetric"][1])
    assert not torch.allclose(grads["local"][0], grads["random"][0])


def test_trace_bits_in_a_config():
    from mesu_snn.config import ConfigError, parse_config
    raw = {"seed": 0, "data": {"dataset": "digits"}, "stream": {"kind": "permuted", "n_tasks": 2},
           "model": {"kind": "mlp", "hidden": [8]}, "rule": {"name": "sgd_online", "trace_bits": 8}}
    assert parse_config(raw).rule.params["trace_bits"] == 8
    raw["rule"]["trace_bits"] = -2
    with pytest.raises(ConfigError, match="rule.trace_bits"):
        parse_config(raw)
