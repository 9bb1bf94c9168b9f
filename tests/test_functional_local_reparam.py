"""functional.local_reparam: the exact law of the pre-activations and its factorisation."""
from __future__ import annotations

import torch

from mesu_snn.functional.local_reparam import (factor_covariance, pair_products, preactivation_moments,
                                               sigma_grad_from_k)


def _inputs(t=5, b=3, n_in=6, j=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(t, b, n_in, generator=g, dtype=torch.float64) < 0.5).double()
    mu = torch.randn(j, n_in, generator=g, dtype=torch.float64)
    sig = torch.rand(j, n_in, generator=g, dtype=torch.float64) * 0.5 + 0.1
    return x, mu, sig


def test_moments_match_brute_force():
    x, mu, sig = _inputs()
    bmu, bsig = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.1
    mean, cov = preactivation_moments(x, mu, sig, bmu, bsig)
    t, b, n_in = x.shape
    for bi in range(b):
        for j in range(mu.shape[0]):
            for ti in range(t):
                assert torch.isclose(mean[ti, bi, j], (mu[j] * x[ti, bi]).sum() + bmu[j])
                for si in range(t):
                    ref = (sig[j] ** 2 * x[ti, bi] * x[si, bi]).sum() + bsig[j] ** 2
                    assert torch.isclose(cov[bi, j, ti, si], ref)
    z = pair_products(x)
    assert z.shape == (b, t, t, n_in) and torch.equal(z[1, 2, 3], x[2, 1] * x[3, 1])


def test_factor_full_rank():
    a = torch.randn(7, 6, 6, dtype=torch.float64)
    cov = a @ a.transpose(-1, -2) + 0.1 * torch.eye(6, dtype=torch.float64)
    lf, wf = factor_covariance(cov)
    torch.testing.assert_close(lf @ lf.transpose(-1, -2), cov, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(wf, torch.linalg.inv(cov) @ lf, rtol=1e-9, atol=1e-9)     # W z = Cov⁻¹ (L z)


def test_factor_rank_deficient_is_exact():
    """Repeated steps, a silent step, a time-constant input, an all-zero input: L Lᵀ = Cov and
    W (L z) = Cov⁺ (L z) (the pseudo-inverse), in float64 and in float32 with exact_cov."""
    x, mu, sig = _inputs(t=6, b=4)
    x[2] = x[1]                    # repeated step
    x[4, 0] = 0                    # silent step (batch element 0)
    x[:, 2] = x[0, 2]              # time-constant (batch element 2): rank 1
    x[:, 3] = 0                    # no input at all: Cov = 0
    _, cov = preactivation_moments(x, mu, sig)
    lf, wf = factor_covariance(cov)
    torch.testing.assert_close(lf @ lf.transpose(-1, -2), cov, rtol=1e-9, atol=1e-9)
    z = torch.randn(*cov.shape[:-1], 3, dtype=torch.float64)
    u = lf @ z
    torch.testing.assert_close(wf @ z, torch.linalg.pinv(cov, hermitian=True) @ u, rtol=1e-6, atol=1e-8)
    assert torch.linalg.matrix_rank(cov[2, 0]) == 1 and lf[3].abs().max() == 0 and wf[3].abs().max() == 0

    x32, mu32, sig32 = x.float(), mu.float(), sig.float()
    _, c32 = preactivation_moments(x32, mu32, sig32)

    def exact(mask):
        return cov[mask]
    l32, w32 = factor_covariance(c32, exact)
    assert l32.dtype == torch.float32
    torch.testing.assert_close((l32 @ l32.transpose(-1, -2)).double(), cov, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((w32 @ z.float()).double(), wf @ z, rtol=1e-4, atol=1e-4)


def test_sigma_grad_formula_is_conditional_expectation():
    """σ ⊙ (K·Z) equals Σ_{m,t} g(t) x_i(t) E[ε_i | u] with E[ε | u] = Aᵀ (A Aᵀ)⁺ u, A = Xᵀ diag(σ_j)."""
    x, mu, sig = _inputs(t=4, b=2, n_in=5, j=3)
    x[3] = x[0]
    _, cov = preactivation_moments(x, mu, sig)
    lf, wf = factor_covariance(cov)
    m = 4
    z = torch.randn(*cov.shape[:-1], m, dtype=torch.float64)          # (B, J, T, M)
    u, v = lf @ z, wf @ z
    g = torch.randn(m, *x.shape[:2], mu.shape[0], dtype=torch.float64)  # (M, T, B, J)
    k = torch.einsum("mtbj,bjsm->bjts", g, v)
    got = sigma_grad_from_k(k, pair_products(x), sig)
    ref = torch.zeros_like(sig)
    for bi in range(x.shape[1]):
        for j in range(mu.shape[0]):
            a_mat = x[:, bi].t().mul(sig[j].unsqueeze(1)).t()          # (T, in) = Xᵀ diag(σ_j)
            pinv = torch.linalg.pinv(a_mat @ a_mat.t(), hermitian=True)
            for mi in range(m):
                e_eps = a_mat.t() @ pinv @ u[bi, j, :, mi]               # E[ε_j | u]
                ref[j] += (g[mi, :, bi, j] @ x[:, bi]) * e_eps
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-9)


def test_non_finite_covariance_gives_nan_not_an_error():
    x, mu, sig = _inputs(t=4, b=1, j=3)
    sig[1, :] = float("inf")
    _, cov = preactivation_moments(x, mu, sig)
    lf, wf = factor_covariance(cov)
    assert torch.isnan(lf[0, 1]).all() and torch.isfinite(lf[0, 0]).all() and torch.isfinite(lf[0, 2]).all()
