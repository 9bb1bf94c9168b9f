"""StreamingStep (mesu_snn/rules/streaming_step.py): the hand-written whole training step equals the
autograd step (same seeds: same loss, gradients, μ and σ), keeps the optimizers' refusals, and is
used by the trainer only where it applies."""
from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import mesu_snn as ms
from mesu_snn.errors import NonFiniteStepError
from mesu_snn.kernels import fast_paths
from mesu_snn.rules import StreamingStep, unsupported_reason
from mesu_snn.rules.streaming_step import _mc_nll, rule_reason, whole_step_for

SIZES = [40, 12, 5]
T, M = 6, 4


def _data(kind, batch, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "snn":
        x = (torch.rand(T, batch, SIZES[0], generator=g) < 0.3).to(dtype)
    else:
        x = torch.randn(batch, SIZES[0], generator=g, dtype=dtype)
    return x, torch.randint(0, SIZES[-1], (batch,), generator=g)


def _net(kind, estimator="local", readout="count", bias=False, activation="relu", dtype=torch.float32,
         sizes=SIZES, **lif):
    torch.manual_seed(0)
    if kind == "snn":
        net = ms.SpikingMLP(sizes, readout=readout, bias=bias, estimator=estimator, mu_init=2.0, **lif)
    else:
        net = ms.BayesMLP(sizes, activation=activation, bias=bias)
        net.layers[0].estimator = estimator
    return net.to(dtype)


def _opt(net, rule, **kw):
    if rule == "mesu":
        return ms.MESU(net, memory=kw.pop("memory", 1e3), sigma_prior=1.0, **kw)
    return ms.BGD(net, **kw)


def _run(make, x, y, fused, rule="mesu", steps=3, reduction="sum", opt_kw=None):
    """Losses, last gradients and final parameters of ``steps`` updates (autograd or fused)."""
    net = make()
    opt = _opt(net, rule, **(opt_kw or {}))
    gen = torch.Generator().manual_seed(7)
    st = StreamingStep(net, opt, samples=M, reduction=reduction) if fused else None
    losses = []
    for _ in range(steps):
        if fused:
            loss, _ = st.forward_backward(x, y, gen)
        else:
            opt.zero_grad(set_to_none=True)
            loss = ms.nll_loss(net(x, samples=M, generator=gen), y)
            if reduction == "mean":
                loss = loss / y.shape[0]
            loss.backward()
        losses.append(loss.detach().clone())
        grads = [p.grad.detach().clone() for p in net.parameters()]
        if rule == "mesu":
            opt.step(batch_size=int(y.shape[0]))
        else:
            opt.step()
    return torch.stack(losses), grads, [p.detach().clone() for p in net.parameters()]


def _assert_same(a, b, dtype):
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a[0], b[0], **tol)
    assert len(a[1]) == len(b[1]) == len(a[2])
    for ga, gb in zip(a[1], b[1]):
        torch.testing.assert_close(ga, gb, **tol)
    for pa, pb in zip(a[2], b[2]):
        torch.testing.assert_close(pa, pb, **tol)


SNN_CASES = [dict(estimator=e, readout=r, bias=b) for e in ("local", "weights") for r in ("count", "membrane")
             for b in (False, True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", SNN_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_spiking_mlp_step_equals_autograd(case, dtype):
    x, y = _data("snn", 1, dtype)
    make = lambda: _net("snn", dtype=dtype, **case)  # noqa: E731
    a, b = _run(make, x, y, False), _run(make, x, y, True)
    assert a[1][0].abs().sum() > 0                       # a real gradient reached the input layer
    _assert_same(a, b, dtype)


@pytest.mark.parametrize("rule,reduction", [("mesu", "sum"), ("bgd", "sum"), ("bgd", "mean")])
@pytest.mark.parametrize("batch", [1, 3])
def test_rules_batches_and_deeper_nets(rule, reduction, batch):
    x, y = _data("snn", batch, torch.float64)
    make = lambda: _net("snn", dtype=torch.float64, sizes=[40, 12, 8, 5], reset="zero", reset_delay=False,  # noqa: E731
                        surrogate=("atan", 2.0))
    _assert_same(_run(make, x, y, False, rule, reduction=reduction), _run(make, x, y, True, rule, reduction=reduction),
                 torch.float64)


@pytest.mark.parametrize("estimator", ["local", "weights"])
@pytest.mark.parametrize("activation,bias", [("relu", False), ("tanh", True), ("sigmoid", False)])
def test_bayes_mlp_step_equals_autograd(estimator, activation, bias):
    x, y = _data("ann", 2, torch.float32)
    make = lambda: _net("ann", estimator=estimator, activation=activation, bias=bias)  # noqa: E731
    _assert_same(_run(make, x, y, False, opt_kw={"clamp_grad": 0.5}), _run(make, x, y, True, opt_kw={"clamp_grad": 0.5}),
                 torch.float32)


def test_without_the_compiled_loops_too():
    x, y = _data("snn", 1, torch.float32)
    make = lambda: _net("snn")  # noqa: E731
    with fast_paths(native=False):
        _assert_same(_run(make, x, y, False), _run(make, x, y, True), torch.float32)


def test_the_time_constant_and_sparse_input_paths():
    """A constant input over the T steps (rank-1 local path) and mostly silent input columns."""
    x = torch.zeros(T, 1, SIZES[0])
    x[:, :, :5] = 1.0
    y = torch.tensor([2])
    make = lambda: _net("snn")  # noqa: E731
    _assert_same(_run(make, x, y, False), _run(make, x, y, True), torch.float32)


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_refused_steps_behave_as_in_the_autograd_path(on_nonfinite):
    x, y = _data("ann", 1, torch.float64)
    for fused in (False, True):
        net = _net("ann", dtype=torch.float64)
        before = [p.detach().clone() for p in net.parameters()]
        opt = ms.MESU(net, memory=1e3, sigma_prior=1.0, clamp_grad=None, lr_sigma=1e8, on_nonfinite=on_nonfinite)
        gen = torch.Generator().manual_seed(3)
        if fused:
            step = StreamingStep(net, opt, samples=M)
            run = lambda: step(x, y, gen)  # noqa: E731
        else:
            def run():
                opt.zero_grad()
                ms.nll_loss(net(x, samples=M, generator=gen), y).backward()
                opt.step(batch_size=1)
        if on_nonfinite == "raise":
            with pytest.raises(NonFiniteStepError, match="<= 0"):
                run()
        else:
            run()
            assert opt.skipped_steps == 1
        for p, q in zip(net.parameters(), before):
            assert torch.equal(p, q)
    # a non-finite gradient (NaN input) is named as such
    x_bad = x.clone()
    x_bad[0, 0] = float("nan")
    net = _net("ann", estimator="weights", dtype=torch.float64)
    opt = ms.MESU(net, memory=1e3, sigma_prior=1.0)
    with pytest.raises(NonFiniteStepError, match="non-finite gradient"):
        StreamingStep(net, opt, samples=M)(x_bad, y)


def _adam_rule(net):
    return ms.make_rule("adam", net, lr=1e-3)


@pytest.mark.parametrize("change,reason", [
    (lambda net: ms.set_mode(net, "mean"), "mean mode"),
    (lambda net: net.layers[1].weight_sigma.requires_grad_(False), "frozen"),
    (lambda net: net.register_forward_hook(lambda *a: None), "hooks"),
    (lambda net: net.layers[0].weight_mu.register_hook(lambda g: g), "hooks"),
    (lambda net: setattr(net.neurons[0], "beta", torch.full((12,), 0.9)) or
     setattr(net.neurons[0], "_scalar_beta", None), "LIF parameters"),
])
def test_unsupported_configurations_are_named(change, reason):
    net = _net("snn")
    opt = _opt(net, "mesu")
    x, _ = _data("snn", 1, torch.float32)
    assert unsupported_reason(net, opt, x, M) is None
    step = StreamingStep(net, opt, samples=M)
    assert step.supported(x) is None
    change(net)
    assert reason in (step.supported(x) or "")
    with pytest.raises(ValueError, match="does not cover"):
        step.forward_backward(x, torch.tensor([0]))


def test_other_models_optimizers_inputs_and_the_switch():
    snn = _net("snn")
    opt = _opt(snn, "mesu")
    x, _ = _data("snn", 1, torch.float32)
    conv = ms.SpikingConvNet((1, 8, 8), (1, 4), 3)
    assert "model" in unsupported_reason(conv)
    assert "learnable" in unsupported_reason(_learnable_beta())
    assert "optimizer" in unsupported_reason(snn, torch.optim.SGD(snn.parameters(), lr=0.1))
    other = _net("snn")
    assert "exactly" in unsupported_reason(snn, _opt(other, "mesu"))
    assert "dtype" in unsupported_reason(snn, opt, x.double(), M)
    assert "shape" in unsupported_reason(snn, opt, x[0], M)
    assert "samples" in unsupported_reason(snn, opt, x, 0)
    with ms.sampled_weights(snn, samples=M):
        assert "sampled_weights" in unsupported_reason(snn, opt, x, M)
    step = StreamingStep(snn, opt, samples=M)
    with fast_paths(whole_step=False):
        assert "switched off" in step.supported(x)
        assert ms.kernels.fast_paths_enabled()            # the other fast paths stay on
    with fast_paths(False):
        assert "switched off" in step.supported(x)
    assert step.supported(x) is None
    with pytest.raises(ValueError, match="does not cover"):
        StreamingStep(conv, None, samples=M)
    with pytest.raises(ValueError, match="no optimizer"):
        StreamingStep(snn, None, samples=M)
    with pytest.raises(ValueError, match="reduction"):
        StreamingStep(snn, opt, samples=M, reduction="max")
    with pytest.raises(ValueError, match="targets"):
        step.forward_backward(x, torch.tensor([[0]]))


def _learnable_beta():
    net = _net("snn")
    net.neurons[0] = ms.LIF(learn_beta=True)
    return net


def test_rule_decisions():
    net = _net("snn")
    assert rule_reason(ms.make_rule("mesu", net, memory=1e3)) is None
    assert rule_reason(ms.make_rule("bgd", _net("snn"))) is None
    assert whole_step_for(ms.make_rule("mesu", _net("snn"), memory=1e3), M) is not False
    for name, kw in (("adam", {"lr": 1e-3}), ("ewc", {}), ("mesu_online", {})):
        try:
            rule = ms.make_rule(name, _net("snn"), **kw)
        except (ValueError, TypeError):
            continue
        assert rule_reason(rule) is not None
        assert whole_step_for(rule, M) is False


def test_trainer_uses_it_and_gives_the_autograd_run(monkeypatch):
    from mesu_snn.build import build_trainer
    from mesu_snn.config import parse_config
    import mesu_snn.rules.streaming_step as S
    raw = {"seed": 0, "data": {"dataset": "digits", "train_per_task": 40, "test_per_task": 20},
           "stream": {"kind": "permuted", "n_tasks": 2, "batch_size": 2, "epochs_per_task": 1},
           "encoder": {"kind": "current", "num_steps": 4, "gain": 2.0},
           "model": {"hidden": [16]},
           "rule": {"name": "mesu", "memory": 1e4},
           "schedule": {"train_samples": 2, "eval_samples": 2, "eval_every": 0, "checkpoint_every": 0}}
    calls = []
    real = S.StreamingStep.forward_backward

    def spy(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)
    monkeypatch.setattr(S.StreamingStep, "forward_backward", spy)
    fused = build_trainer(parse_config(raw))
    m_fused = fused.fit()
    assert len(calls) == fused.n_updates > 0
    calls.clear()
    with fast_paths(whole_step=False):
        ref = build_trainer(parse_config(raw))
        m_ref = ref.fit()
    assert not calls
    assert m_fused["accuracy_matrix"] == m_ref["accuracy_matrix"]
    for p, q in zip(fused.model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # a mean-mode rule never uses it
    raw["rule"] = {"name": "adam", "lr": 1e-3}
    build_trainer(parse_config(raw)).fit()
    assert not calls


def test_changes_between_calls_are_followed():
    """A LIF setting changed between steps (reset timing) and a zeroed gradient are taken into account."""
    x, y = _data("snn", 1, torch.float64)
    outs = []
    for fused in (False, True):
        net = _net("snn", dtype=torch.float64)
        opt = _opt(net, "mesu")
        gen = torch.Generator().manual_seed(2)
        step = StreamingStep(net, opt, samples=M)
        for k in range(3):
            for lif in net.neurons:
                lif.reset_delay = k % 2 == 0
            if k == 2:
                opt.zero_grad(set_to_none=True)
            if fused:
                step(x, y, gen)
            else:
                opt.zero_grad(set_to_none=True)
                ms.nll_loss(net(x, samples=M, generator=gen), y).backward()
                opt.step(batch_size=1)
        outs.append([p.detach().clone() for p in net.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_replaced_neuron_or_layer_is_seen():
    x, y = _data("snn", 1, torch.float64)
    outs = []
    for fused in (False, True):
        net = _net("snn", dtype=torch.float64)
        opt = _opt(net, "mesu")
        gen = torch.Generator().manual_seed(4)
        step = StreamingStep(net, opt, samples=M)
        for k in range(2):
            if k == 1:
                net.neurons[0] = ms.LIF(beta=0.5, threshold=0.7, reset="zero").double()
            if fused:
                assert step.supported(x) is None
                step(x, y, gen)
            else:
                opt.zero_grad(set_to_none=True)
                ms.nll_loss(net(x, samples=M, generator=gen), y).backward()
                opt.step(batch_size=1)
        outs.append([p.detach().clone() for p in net.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    net.neurons[0] = ms.LIF(learn_beta=True).double()
    assert "learnable" in step.supported(x)


@pytest.mark.parametrize("rule", ["mesu", "bgd"])
def test_the_direct_optimizer_step_equals_optimizer_step_and_hooks_are_honoured(rule):
    x, y = _data("snn", 1, torch.float32)
    results = []
    for direct in (True, False):
        net = _net("snn")
        opt = _opt(net, rule)
        st = StreamingStep(net, opt, samples=M)
        gen = torch.Generator().manual_seed(5)
        losses = []
        for _ in range(3):
            if direct:
                losses.append(st.step(x, y, gen))
            else:
                loss, _ = st.forward_backward(x, y, gen)
                opt.step(batch_size=1) if rule == "mesu" else opt.step()
                losses.append(loss)
        results.append((torch.stack(losses), [p.detach().clone() for p in net.parameters()],
                        opt.param_groups[0]["step"]))
    (la, pa, sa), (lb, pb, sb) = results
    assert sa == sb == 3
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)
    # a registered hook (the optimizer's own or a global one), an LR scheduler's patched step and the
    # profiler go through optimizer.step, which runs them
    net = _net("snn")
    opt = _opt(net, rule)
    st = StreamingStep(net, opt, samples=M)
    calls = []
    h = opt.register_step_post_hook(lambda *a: calls.append("own"))
    st.step(x, y)
    h.remove()
    h = register_optimizer_step_pre_hook(lambda *a: calls.append("global"))
    try:
        st.step(x, y)
    finally:
        h.remove()
    st.step(x, y)
    assert calls == ["own", "global"]
    assert opt.param_groups[0]["step"] == 3
    inner = opt.step                         # a step replaced on the instance (as LR schedulers do)

    def patched(*a, **kw):
        calls.append("patched")
        return inner(*a, **kw)
    opt.step = patched
    st.step(x, y)
    assert calls[-1] == "patched"
    del opt.step
    with torch.autograd.profiler.profile() as prof:
        st.step(x, y)
    assert any("Optimizer.step" in e.name for e in prof.function_events)
    assert opt.param_groups[0]["step"] == 5


def test_the_direct_step_refuses_a_bad_batch_size():
    x, y = _data("snn", 1, torch.float32)
    net = _net("snn")
    st = StreamingStep(net, _opt(net, "mesu"), samples=M)
    st.forward_backward(x, y)
    with pytest.raises(ValueError, match="batch_size"):
        st.optimizer_step(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_the_fused_loss_equals_log_softmax_mean_nll_and_its_autograd_gradient(dtype, reduction):
    g = torch.Generator().manual_seed(1)
    out = (3 * torch.randn(M, 3, 7, generator=g, dtype=dtype)).requires_grad_()
    y = torch.tensor([2, 0, 6], dtype=torch.int32)
    ref = torch.nn.functional.nll_loss(torch.log_softmax(out, -1).mean(0), y.long(), reduction=reduction)
    (ref_g,) = torch.autograd.grad(ref, out)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-15)
    for native_on in (True, False):
        with ms.kernels.fast_paths(native=native_on):
            loss, grad = _mc_nll(out.detach(), y, reduction)
        torch.testing.assert_close(loss, ref.detach(), **tol)
        torch.testing.assert_close(grad, ref_g, **tol)
        with ms.kernels.fast_paths(native=native_on), pytest.raises((IndexError, RuntimeError)):
            _mc_nll(out.detach(), torch.tensor([2, 0, 7]), reduction)      # a target out of range
    bad = out.detach().clone()
    bad[3, 1, 4] = float("nan")
    loss, grad = _mc_nll(bad, y, reduction)
    assert loss.isnan() and grad[3, 1].isnan().all() and grad[:, 0].isfinite().all()


def test_a_replaced_parameter_is_seen():
    x, y = _data("snn", 1, torch.float32)
    net = _net("snn")
    opt = _opt(net, "mesu")
    step = StreamingStep(net, opt, samples=M)
    step(x, y)
    layer = net.layers[1]
    layer.weight_sigma = torch.nn.Parameter(layer.weight_sigma.detach().clone())
    assert "exactly" in step.supported(x)            # the optimizer holds the old σ
    with pytest.raises(ValueError, match="exactly"):
        step(x, y)
    opt2 = _opt(net, "mesu")                          # a step over the new parameters uses them
    step2 = StreamingStep(net, opt2, samples=M)
    step2(x, y)
    assert layer.weight_sigma.grad is not None and layer.weight_sigma.grad.abs().sum() > 0
