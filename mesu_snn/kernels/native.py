"""Optional compiled loops for the batch-1 hot path, built lazily with the system C++ compiler.

At batch 1 a training step is hundreds of tiny tensor ops, each costing a few µs of dispatch for
nanoseconds of arithmetic. The loops here do a whole op sequence in one call on raw CPU memory:

* ``lif_forward`` / ``lif_backward``: the fused LIF sequence of :mod:`mesu_snn.kernels.lif_fused`
  (its ``_forward`` loop over time, and its vectorised surrogate pass plus the backward recurrence)
  in one pass each. The arithmetic is the same float operations in the same order (compiled with
  ``-ffp-contract=off``: no fused multiply-adds), so the spikes and the membranes equal the torch
  kernel's bit for bit; gradients agree to rounding (the torch kernel's in-place ``addcmul_``
  may fuse a multiply-add).
* ``pair_products``, ``local_factor``, ``local_k``: the small steps of
  :mod:`mesu_snn.kernels.local_linear` (T > 1) between its matmuls: the pair products x(t)·x(s), the
  per-neuron T × T Cholesky factor L (float64), L⁻ᵀ, and u = L z, v = L⁻ᵀ z for the M samples, and in
  backward the T × T sums K = Σ_m g vᵀ folded onto the pairs. Covariances the Cholesky path refuses
  are flagged and factored by the torch code (eigen path). Results equal the torch path to rounding.
  ``scan_input``: its input checks (silent columns, a time-constant input, the non-zero count) in one
  pass. ``sparse_local_fwd`` / ``sparse_local_bwd``: for a sparse input (spikes, event frames) the
  mean, the pair covariances and both weight gradients without the pair products or BLAS, from the
  input's non-zeros (work ∝ non-zeros of the pair products × J instead of P × in × J).
* ``gw_backward``: the backward of :func:`mesu_snn.kernels.gaussian_weight` (Σ_m g, Σ_m g·ε).
* ``mc_nll``: the loss of :class:`mesu_snn.rules.StreamingStep` (log-softmax, mean over the M samples,
  NLL) and its gradient with respect to the logits, in one pass.
* ``normal_f32``: float32 standard normals, Philox4x32-10 + Box-Muller (:mod:`mesu_snn.kernels.noise` draws
  through it; ``philox_words`` gives the raw words for the known-answer tests).
* ``all_finite``, ``mesu_pairs``: the optimizers' NaN/Inf guard over every gradient and the MESU
  update of :func:`mesu_snn.kernels.fused_update.fused_mesu_step` over all pairs, in one call each.
  ``mesu_step``: one group's guard and update in one call, the gradients' guard inside the update's
  no-write check pass (a check pass, then the write pass).

Nothing is built at install time. The first call compiles one small C++ file (no torch headers, about
13 s of compiler time; for the x86-64 level torch reports, e.g. ``-march=x86-64-v4`` on AVX-512 machines) into a cache directory (``$MESU_SNN_CACHE``, else ``$XDG_CACHE_HOME/mesu_snn``, else
``~/.cache/mesu_snn``; the file name carries a hash of the source and flags) and loads it with
ctypes. If there is no compiler, the build fails, or ``MESU_SNN_NATIVE=0`` is set, :func:`library`
returns None once and for all (a warning is logged, once) and the callers use their torch code.
``with fast_paths(native=False):`` (:mod:`mesu_snn.kernels.switch`) switches these loops off
without switching off the other fast paths; ``fast_paths(False)`` switches off everything.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["library", "available", "cache_dir", "SOURCE"]

log = logging.getLogger(__name__)

SOURCE = r"""
#include <cstdint>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

// reset: 0 subtract, 1 zero, 2 none. sur: 0 fast sigmoid, 1 atan, 2 heaviside.
// Layout: x, s, u are (O, T, I) contiguous; v0 is (O, I) or null.

template <typename F, int RESET, bool DELAY, bool LEAK0, bool SCALED>
static void lif_fwd_t(const F* x, const F* v0, F* s, F* u, int64_t O, int64_t T, int64_t I,
                      F beta, F thr, F vleak, F vreset, F scale, F* v, F* r) {
  constexpr bool delayed = DELAY && RESET != 2;
  for (int64_t o = 0; o < O; ++o) {
    for (int64_t i = 0; i < I; ++i) {
      v[i] = v0 ? v0[o * I + i] : vleak;
      r[i] = v[i] > thr ? (F)1 : (F)0;
    }
    for (int64_t t = 0; t < T; ++t) {
      const int64_t off = (o * T + t) * I;
      const F* xt = x + off;
      F* ut = u + off;
      F* st = s + off;
      for (int64_t i = 0; i < I; ++i) {
        F vv = v[i];
        if (delayed && RESET == 1) vv = r[i] != (F)0 ? vreset : vv;
        F d = xt[i];
        if (SCALED) d = d * scale;
        F w;
        if (LEAK0) {
          w = vv * beta;
        } else {
          w = vv - vleak;
          w = w * beta;
          w = w + vleak;
        }
        w = w + d;
        if (delayed && RESET == 0) { F rt = r[i] * thr; w = w - rt; }
        const F sp = w > thr ? (F)1 : (F)0;
        ut[i] = w;
        st[i] = sp;
        if (DELAY || RESET == 2) { v[i] = w; r[i] = sp; }
        else if (RESET == 0) { F st_thr = sp * thr; v[i] = w - st_thr; }
        else { v[i] = sp != (F)0 ? vreset : w; }
      }
    }
  }
}

template <typename F, int RESET, bool DELAY>
static void lif_fwd_r(const F* x, const F* v0, F* s, F* u, int64_t O, int64_t T, int64_t I, F beta, F thr,
                      F vleak, F vreset, F scale, bool leak0, bool scaled, F* v, F* r) {
  if (leak0 && !scaled) lif_fwd_t<F, RESET, DELAY, true, false>(x, v0, s, u, O, T, I, beta, thr, vleak, vreset, scale, v, r);
  else if (leak0) lif_fwd_t<F, RESET, DELAY, true, true>(x, v0, s, u, O, T, I, beta, thr, vleak, vreset, scale, v, r);
  else if (!scaled) lif_fwd_t<F, RESET, DELAY, false, false>(x, v0, s, u, O, T, I, beta, thr, vleak, vreset, scale, v, r);
  else lif_fwd_t<F, RESET, DELAY, false, true>(x, v0, s, u, O, T, I, beta, thr, vleak, vreset, scale, v, r);
}

template <typename F>
static void lif_fwd(const F* x, const F* v0, F* s, F* u, int64_t O, int64_t T, int64_t I,
                    double beta_d, double thr_d, int reset, int delay, double vleak_d, double vreset_d,
                    double scale_d, F* v, F* r) {
  const F beta = (F)beta_d, thr = (F)thr_d, vleak = (F)vleak_d, vreset = (F)vreset_d, scale = (F)scale_d;
  const bool scaled = scale_d != 1.0, leak0 = vleak_d == 0.0;
#define MESU_LIF(R, D) lif_fwd_r<F, R, D>(x, v0, s, u, O, T, I, beta, thr, vleak, vreset, scale, leak0, scaled, v, r)
  if (reset == 0) { if (delay) MESU_LIF(0, true); else MESU_LIF(0, false); }
  else if (reset == 1) { if (delay) MESU_LIF(1, true); else MESU_LIF(1, false); }
  else { if (delay) MESU_LIF(2, true); else MESU_LIF(2, false); }
#undef MESU_LIF
}

// p: the slope (fast sigmoid) or pi/2*alpha (atan); half: alpha/2 (atan), each rounded to F once
template <typename F>
static inline F surrogate(F z, int sur, F p, F half) {
  if (sur == 0) { z = std::fabs(z); z = z * p; z = z + (F)1; z = z * z; return (F)1 / z; }
  if (sur == 1) { z = z * p; z = z * z; z = z + (F)1; z = (F)1 / z; return z * half; }
  return (F)1;
}

// a (O, T, I) out: dC/du (before any input_scale factor). gs: dC/dspikes, gm: dC/dmem (or null).
template <typename F>
static void lif_bwd(const F* u, const F* gs, const F* gm, F* a, int64_t O, int64_t T, int64_t I,
                    double beta_d, double thr_d, int reset, int delay, int detach, double vreset_d,
                    int sur, double sur_p) {
  const F beta = (F)beta_d, thr = (F)thr_d, vreset = (F)vreset_d;
  const F p = sur == 1 ? (F)(3.14159265358979323846 / 2 * sur_p) : (F)sur_p, half = (F)(sur_p / 2);
  const bool delayed_model = delay || reset == 2;
  for (int64_t o = 0; o < O; ++o) {
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t off = (o * T + t) * I;
      const F* ut = u + off;
      const F* gst = gs + off;
      const F* gmt = gm ? gm + off : nullptr;
      F* at = a + off;
      const F* an = t + 1 < T ? a + off + I : nullptr;
      for (int64_t i = 0; i < I; ++i) {
        const F uu = ut[i];
        const F sg = surrogate(uu - thr, sur, p, half);
        F acc = sg * gst[i];
        F coef;
        bool unit = false;     // coef is the plain scalar beta (torch: add_ with alpha)
        if (delayed_model) {
          if (gmt) acc = acc + gmt[i];
          if (reset == 2) { coef = beta; unit = true; }
          else if (reset == 0) {
            if (detach) { coef = beta; unit = true; }
            else { F ts = thr * sg; coef = beta - ts; }
          } else {
            const F s = uu > thr ? (F)1 : (F)0;
            F e = (F)1 - s;
            if (!detach) { F dv = vreset - uu; dv = dv * sg; e = e + dv; }
            coef = e * beta;
          }
        } else {
          F e;
          bool e_one = false;
          if (reset == 0) {
            if (detach) { e = (F)1; e_one = true; }
            else { F ts = thr * sg; e = (F)1 - ts; }
          } else {
            const F s = uu > thr ? (F)1 : (F)0;
            e = (F)1 - s;
            if (!detach) { F dv = vreset - uu; dv = dv * sg; e = e + dv; }
          }
          if (gmt) acc = e_one ? acc + gmt[i] : acc + gmt[i] * e;
          if (e_one) { coef = beta; unit = true; } else coef = e * beta;
        }
        (void)unit;
        if (an) { F c = coef * an[i]; acc = acc + c; }
        at[i] = acc;
      }
    }
  }
}


// ---- local reparameterisation (mesu_snn.kernels.local_linear, T > 1) ----
// x (T, E) contiguous (E = B*in) -> zu (P, E), the pairs t <= s in row-major (triu_indices) order.
template <typename F>
static void pair_products(const F* x, F* zu, int64_t T, int64_t E) {
  int64_t p = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = t; s < T; ++s, ++p) {
      const F* a = x + t * E; const F* b = x + s * E; F* o = zu + p * E;
      for (int64_t e = 0; e < E; ++e) o[e] = a[e] * b[e];
    }
}

// cu (P, N): the upper-triangle covariances per column n; z (M, T, N) normals -> uv (M, 2T, N) with
// u = L z, v = L^-T z (L the float64 Cholesky factor, rounded to F as the torch path does); columns
// whose Cholesky fails or has a pivot L_kk^2 <= rtol * max diag are flagged in bad (and left zero).
// The factorisation runs for all columns at once, n innermost (it vectorises): every column sees the
// same double operations in the same order as a column-by-column Cholesky and forward substitution;
// a column that fails goes on with NaNs and is flagged at the end.
template <typename F>
static int64_t local_factor(const F* cu, const F* z, F* uv, unsigned char* bad, int64_t T, int64_t N,
                            int64_t M, double rtol) {
  const int64_t TT = T * T;
  double* C = (double*)std::malloc(sizeof(double) * (3 * TT * N + T * N + 3 * N));
  F* lw = (F*)std::malloc(sizeof(F) * 2 * TT * N);      // lw[(r * T + k) * N + n]
  if (!C || !lw) { std::free(C); std::free(lw); return -1; }
  double* L = C + TT * N; double* Li = L + TT * N; double* dinv = Li + TT * N;   // [q * N + n]
  double* scale = dinv + T * N; double* piv = scale + N; double* okv = piv + N;
  {
    int64_t p = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t s = t; s < T; ++s, ++p) {
        const F* row = cu + p * N; double* a = C + (t * T + s) * N; double* b = C + (s * T + t) * N;
        for (int64_t n = 0; n < N; ++n) { const double v = (double)row[n]; a[n] = v; b[n] = v; }
      }
  }
  for (int64_t n = 0; n < N; ++n) { scale[n] = C[n]; piv[n] = INFINITY; okv[n] = 1.0; }
  for (int64_t j = 1; j < T; ++j) {
    const double* d = C + (j * T + j) * N;
    for (int64_t n = 0; n < N; ++n) scale[n] = d[n] > scale[n] ? d[n] : scale[n];
  }
  for (int64_t q = 0; q < TT * N; ++q) { L[q] = 0.0; Li[q] = 0.0; }
  for (int64_t j = 0; j < T; ++j) {
    double* ljj = L + (j * T + j) * N; double* dj = dinv + j * N;
    const double* cjj = C + (j * T + j) * N;
    for (int64_t n = 0; n < N; ++n) ljj[n] = cjj[n];                  // sum, accumulated in place
    for (int64_t k = 0; k < j; ++k) {
      const double* ljk = L + (j * T + k) * N;
      for (int64_t n = 0; n < N; ++n) { double sq = ljk[n] * ljk[n]; ljj[n] = ljj[n] - sq; }
    }
    for (int64_t n = 0; n < N; ++n) {
      const double sum = ljj[n];
      okv[n] = (sum > 0.0) ? okv[n] : 0.0;
      const double d = std::sqrt(sum), inv = 1.0 / d;
      ljj[n] = d; dj[n] = inv;
      const double dd = d * d;
      piv[n] = dd < piv[n] ? dd : piv[n];
    }
    for (int64_t i = j + 1; i < T; ++i) {
      double* lij = L + (i * T + j) * N; const double* cij = C + (i * T + j) * N;
      for (int64_t n = 0; n < N; ++n) lij[n] = cij[n];
      for (int64_t k = 0; k < j; ++k) {
        const double* lik = L + (i * T + k) * N; const double* ljk = L + (j * T + k) * N;
        for (int64_t n = 0; n < N; ++n) { double pr = lik[n] * ljk[n]; lij[n] = lij[n] - pr; }
      }
      for (int64_t n = 0; n < N; ++n) lij[n] = lij[n] * dj[n];
    }
  }
  // Li = L^-1 (lower triangular), by forward substitution on the columns of I
  for (int64_t col = 0; col < T; ++col) {
    double* lcc = Li + (col * T + col) * N; const double* dc = dinv + col * N;
    for (int64_t n = 0; n < N; ++n) lcc[n] = dc[n];
    for (int64_t i = col + 1; i < T; ++i) {
      double* lic = Li + (i * T + col) * N;
      for (int64_t n = 0; n < N; ++n) lic[n] = 0.0;
      for (int64_t k = col; k < i; ++k) {
        const double* lik = L + (i * T + k) * N; const double* lkc = Li + (k * T + col) * N;
        for (int64_t n = 0; n < N; ++n) { double pr = lik[n] * lkc[n]; lic[n] = lic[n] - pr; }
      }
      const double* di = dinv + i * N;
      for (int64_t n = 0; n < N; ++n) lic[n] = lic[n] * di[n];
    }
  }
  for (int64_t r = 0; r < T; ++r)
    for (int64_t k = 0; k < T; ++k) {
      const double* l = L + (r * T + k) * N; const double* li = Li + (k * T + r) * N;
      F* ou = lw + (r * T + k) * N; F* ov = lw + ((T + r) * T + k) * N;
      for (int64_t n = 0; n < N; ++n) { ou[n] = (F)l[n]; ov[n] = (F)li[n]; }   // u: L[r,k]; v: (L^-T)[r,k] = Li[k,r]
    }
  int64_t nbad = 0;
  for (int64_t n = 0; n < N; ++n) {
    const bool b = !(okv[n] != 0.0) || !(piv[n] > rtol * scale[n]);
    bad[n] = b ? 1 : 0;
    if (b) { ++nbad; for (int64_t q = 0; q < 2 * TT; ++q) lw[q * N + n] = (F)0; }
  }
  // uv[m, r, n] = sum_k lw[r, k, n] z[m, k, n], k = 0, 1, ... in order (vectorised over n)
  for (int64_t m = 0; m < M; ++m)
    for (int64_t r = 0; r < 2 * T; ++r) {
      F* o = uv + (m * 2 * T + r) * N;
      const F* zm = z + m * T * N;
      const F* l0 = lw + (r * T) * N;
      for (int64_t n = 0; n < N; ++n) o[n] = l0[n] * zm[n];
      for (int64_t k = 1; k < T; ++k) {
        const F* lk = lw + (r * T + k) * N; const F* zk = zm + k * N;
        for (int64_t n = 0; n < N; ++n) { F pr = lk[n] * zk[n]; o[n] = o[n] + pr; }
      }
    }
  std::free(C); std::free(lw);
  return nbad;
}

// backward: g (M, T, N), v (rows T..2T-1 of uv (M, 2T, N)) -> ks (P, N) with, for the pair p = (t, s),
// ks = half_p * (K[t,s] + K[s,t]), K[t,s,n] = sum_m g[m,t,n] v[m,s,n], half_p = 1/2 on the diagonal.
// Also kb (N,): sum_{t,s} K[t,s,n] (for the bias sigma).
template <typename F>
static void local_k(const F* g, const F* uv, F* ks, F* kb, int64_t T, int64_t N, int64_t M) {
  F* K = (F*)std::malloc(sizeof(F) * T * T * N);
  if (!K) return;
  for (int64_t j = 0; j < T * T * N; ++j) K[j] = (F)0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t t = 0; t < T; ++t) {
      const F* gt = g + (m * T + t) * N;
      for (int64_t s = 0; s < T; ++s) {
        const F* vs = uv + (m * 2 * T + T + s) * N;
        F* k = K + (t * T + s) * N;
        for (int64_t n = 0; n < N; ++n) { F pr = gt[n] * vs[n]; k[n] = k[n] + pr; }
      }
    }
  int64_t p = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = t; s < T; ++s, ++p) {
      const F* a = K + (t * T + s) * N; const F* b = K + (s * T + t) * N; F* o = ks + p * N;
      const F h = t == s ? (F)0.5 : (F)1;
      for (int64_t n = 0; n < N; ++n) { F v = a[n] + b[n]; o[n] = v * h; }
    }
  if (kb) {
    for (int64_t n = 0; n < N; ++n) kb[n] = (F)0;
    for (int64_t q = 0; q < T * T; ++q)
      for (int64_t n = 0; n < N; ++n) kb[n] = kb[n] + K[q * N + n];
  }
  std::free(K);
}

// ---- Gaussian weights (mesu_snn.kernels.gaussian_weight) backward: g (M, W), eps (M, W) ->
// gmu = sum_m g_m, gsig = sum_m g_m * eps_m (sample by sample, as the torch loop); either may be null.
template <typename F>
static void gw_backward(const F* g, const F* eps, F* gmu, F* gsig, int64_t M, int64_t W) {
  if (gmu) { for (int64_t w = 0; w < W; ++w) gmu[w] = g[w];
             for (int64_t m = 1; m < M; ++m) { const F* gm = g + m * W; for (int64_t w = 0; w < W; ++w) gmu[w] = gmu[w] + gm[w]; } }
  if (gsig) { for (int64_t w = 0; w < W; ++w) gsig[w] = g[w] * eps[w];
              for (int64_t m = 1; m < M; ++m) { const F* gm = g + m * W; const F* em = eps + m * W;
                for (int64_t w = 0; w < W; ++w) { F pr = gm[w] * em[w]; gsig[w] = gsig[w] + pr; } } }
}

// ---- the Monte-Carlo NLL of a whole step (mesu_snn.rules.streaming_step): logits o (M, B, C), targets y (B,)
// -> returns 1 and *loss = -sum_b mean_m log_softmax(o[m, b])[y_b] (the value of nll_loss(log_softmax(o).mean(0),
// y, "sum")), g = its gradient times scale (scale/M · (softmax - onehot)), each row as torch's log_softmax and
// its backward compute it: lsm = (o - max) - log(sum exp(o - max)), g = cm·[c = y] - exp(lsm)·cm, cm = -scale/M;
// 0 (nothing reliable written) for a target outside [0, C).
template <typename F>
static int mc_nll(const F* o, const int64_t* y, F* g, F* loss, int64_t M, int64_t B, int64_t C, double scale) {
  for (int64_t b = 0; b < B; ++b) if (y[b] < 0 || y[b] >= C) return 0;
  const F cm = (F)(-scale / (double)M);
  F acc = (F)0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = y[b];
    F pick = (F)0;
    for (int64_t m = 0; m < M; ++m) {
      const F* r = o + (m * B + b) * C;
      F* gr = g + (m * B + b) * C;
      F mx = r[0];
      for (int64_t c = 1; c < C; ++c) mx = (r[c] > mx || r[c] != r[c]) ? r[c] : mx;
      F s = (F)0;
      for (int64_t c = 0; c < C; ++c) s = s + (F)std::exp(r[c] - mx);
      const F lse = (F)std::log(s);
      for (int64_t c = 0; c < C; ++c) {
        const F l = (r[c] - mx) - lse;
        const F e = (F)std::exp(l);
        const F ec = e * cm;
        gr[c] = (c == t ? cm : (F)0) - ec;
      }
      pick = pick + ((r[t] - mx) - lse);
    }
    acc = acc - pick / (F)M;
  }
  *loss = acc;
  return 1;
}

// ---- local_linear on a sparse input (spikes, event frames), without the pair products or BLAS:
// x (T, B, IN), mu and sig (J, IN) contiguous. Forward: mean (T, B, J) = x mu^T and cu (P, B*J) =
// zu (sig^2)^T with zu[(t, s)] = x[t] x[s] (pairs t <= s, triu order), never formed: for each input i
// and batch element b, the steps where x != 0 and the products of each pair of them, each added times
// column i of mu or sig^2. The inputs go in tiles of SL_TILE: the tile's columns of mu and sig^2 are
// copied once into rows of a small buffer (whole cache lines read), so every add is over contiguous
// rows of J. The products are pair_products' (x[t] * x[s], t <= s); the sums run in another order
// than BLAS's (equal to rounding). Work: the non-zeros of zu times J instead of P * IN * J.
// d[c * ldd + r] = s[r * ld + c] for r < rows, c < cols (a copy: exact); 8 x 8 blocks in AVX registers
// where the compiler targets AVX2 (float), element by element otherwise.
#if defined(__AVX2__)
#include <immintrin.h>
static inline void tr8x8(const float* s, int64_t ld, float* d, int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ld), r2 = _mm256_loadu_ps(s + 2 * ld),
         r3 = _mm256_loadu_ps(s + 3 * ld), r4 = _mm256_loadu_ps(s + 4 * ld), r5 = _mm256_loadu_ps(s + 5 * ld),
         r6 = _mm256_loadu_ps(s + 6 * ld), r7 = _mm256_loadu_ps(s + 7 * ld);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
         t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
         t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
         u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
         u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
         u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif
template <typename F>
static void transpose_block(const F* s, int64_t ld, F* d, int64_t ldd, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) for (int64_t c = 0; c < cols; ++c) d[c * ldd + r] = s[r * ld + c];
}
#if defined(__AVX2__)
template <>
void transpose_block<float>(const float* s, int64_t ld, float* d, int64_t ldd, int64_t rows, int64_t cols) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) {
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) tr8x8(s + r * ld + c, ld, d + c * ldd + r, ldd);
    for (; c < cols; ++c) for (int64_t q = r; q < r + 8; ++q) d[c * ldd + q] = s[q * ld + c];
  }
  for (; r < rows; ++r) for (int64_t c = 0; c < cols; ++c) d[c * ldd + r] = s[r * ld + c];
}
#endif

#define SL_TILE 16
// the work space of both loops: pidx[t * T + s] = the row of pair (t, s) (t <= s), ts (T) the steps of
// one input's non-zeros; buf: two tiles of SL_TILE rows of J, then xv (T) their values. 1 if out of memory.
template <typename F>
static int sl_work(int64_t T, int64_t J, int64_t** pidx, F** buf) {
  *pidx = (int64_t*)std::malloc(sizeof(int64_t) * (T * T + T));
  *buf = (F*)std::malloc(sizeof(F) * (2 * SL_TILE * J + T));
  if (!*pidx || !*buf) { std::free(*pidx); std::free(*buf); return 1; }
  for (int64_t t = 0, p = 0; t < T; ++t) for (int64_t s = t; s < T; ++s, ++p) (*pidx)[t * T + s] = p;
  return 0;
}
// JC > 0: J known at compile time (the inner loops over J unrolled into whole vectors; see SL_DISPATCH)
template <typename F, int JC>
static int sparse_local_fwd_t(const F* x, const F* mu, const F* sig, F* __restrict mean, F* __restrict cu,
                              int64_t T, int64_t B, int64_t IN, int64_t J_) {
  const int64_t J = JC > 0 ? (int64_t)JC : J_;
  const int64_t BJ = B * J;
  const int64_t P = T * (T + 1) / 2;
  int64_t* pidx; F* buf;
  if (sl_work<F>(T, J, &pidx, &buf)) return 1;
  int64_t* ts = pidx + T * T;
  F* cmt = buf; F* cst = buf + SL_TILE * J; F* xv = buf + 2 * SL_TILE * J;
  for (int64_t q = 0; q < T * BJ; ++q) mean[q] = (F)0;
  for (int64_t q = 0; q < P * BJ; ++q) cu[q] = (F)0;
  for (int64_t i0 = 0; i0 < IN; i0 += SL_TILE) {
    const int64_t w = IN - i0 < SL_TILE ? IN - i0 : SL_TILE;
    int any = 0;
    for (int64_t q = 0; q < T * B && !any; ++q) for (int64_t ii = 0; ii < w; ++ii) any |= x[q * IN + i0 + ii] != (F)0;
    if (!any) continue;
    transpose_block<F>(mu + i0, IN, cmt, J, J, w);
    transpose_block<F>(sig + i0, IN, cst, J, J, w);
    for (int64_t q = 0; q < w * J; ++q) cst[q] = cst[q] * cst[q];
    for (int64_t ii = 0; ii < w; ++ii) {
      const int64_t i = i0 + ii;
      const F* __restrict cm = cmt + ii * J; const F* __restrict cs = cst + ii * J;
      for (int64_t b = 0; b < B; ++b) {
        int64_t k = 0;
        for (int64_t t = 0; t < T; ++t) { F v = x[(t * B + b) * IN + i]; if (v != (F)0) { ts[k] = t; xv[k] = v; ++k; } }
        for (int64_t a = 0; a < k; ++a) {
          F* __restrict o = mean + (ts[a] * B + b) * J; const F va = xv[a];
          for (int64_t j = 0; j < J; ++j) o[j] += va * cm[j];
          for (int64_t c = a; c < k; ++c) {
            F* __restrict oc = cu + pidx[ts[a] * T + ts[c]] * BJ + b * J; const F v = va * xv[c];
            for (int64_t j = 0; j < J; ++j) oc[j] += v * cs[j];
          }
        }
      }
    }
  }
  std::free(pidx); std::free(buf);
  return 0;
}

// Backward of sparse_local_fwd: gmu (J, IN) = gsum^T x with gsum (T, B, J), and gsig (J, IN) =
// sig * (ks^T zu), ks (P, B*J) the pair sums of local_k; per tile of inputs, the sums in rows of a
// small buffer, then written out a cache line per (j, tile) (zero for inputs that are zero throughout).
template <typename F, int JC>
static int sparse_local_bwd_t(const F* x, const F* sig, const F* gsum, const F* ks, F* gmu, F* gsig,
                              int64_t T, int64_t B, int64_t IN, int64_t J_) {
  const int64_t J = JC > 0 ? (int64_t)JC : J_;
  const int64_t BJ = B * J;
  int64_t* pidx; F* buf;
  if (sl_work<F>(T, J, &pidx, &buf)) return 1;
  int64_t* ts = pidx + T * T;
  F* amt = buf; F* ast = buf + SL_TILE * J; F* xv = buf + 2 * SL_TILE * J;
  for (int64_t i0 = 0; i0 < IN; i0 += SL_TILE) {
    const int64_t w = IN - i0 < SL_TILE ? IN - i0 : SL_TILE;
    for (int64_t q = 0; q < 2 * SL_TILE * J; ++q) buf[q] = (F)0;
    for (int64_t ii = 0; ii < w; ++ii) {
      const int64_t i = i0 + ii;
      F* __restrict am = amt + ii * J; F* __restrict as = ast + ii * J;
      for (int64_t b = 0; b < B; ++b) {
        int64_t k = 0;
        for (int64_t t = 0; t < T; ++t) { F v = x[(t * B + b) * IN + i]; if (v != (F)0) { ts[k] = t; xv[k] = v; ++k; } }
        for (int64_t a = 0; a < k; ++a) {
          const F* __restrict g = gsum + (ts[a] * B + b) * J; const F va = xv[a];
          for (int64_t j = 0; j < J; ++j) am[j] += va * g[j];
          for (int64_t c = a; c < k; ++c) {
            const F* __restrict kk = ks + pidx[ts[a] * T + ts[c]] * BJ + b * J; const F v = va * xv[c];
            for (int64_t j = 0; j < J; ++j) as[j] += v * kk[j];
          }
        }
      }
    }
    transpose_block<F>(amt, J, gmu + i0, IN, w, J);
    transpose_block<F>(ast, J, gsig + i0, IN, w, J);
    for (int64_t j = 0; j < J; ++j) {
      F* __restrict os = gsig + j * IN + i0; const F* __restrict sr = sig + j * IN + i0;
      for (int64_t ii = 0; ii < w; ++ii) os[ii] = sr[ii] * os[ii];
    }
  }
  std::free(pidx); std::free(buf);
  return 0;
}
#undef SL_TILE
// float: the common layer widths get their own compiled loops (measured 1.1-1.4x faster at J = 50, 100), other
// widths and double the generic ones; the arithmetic is the same in every instance
#define SL_DISPATCH(FN, ...) switch (J) { \
    case 32: return FN<float, 32>(__VA_ARGS__); case 50: return FN<float, 50>(__VA_ARGS__); \
    case 64: return FN<float, 64>(__VA_ARGS__); case 100: return FN<float, 100>(__VA_ARGS__); \
    case 128: return FN<float, 128>(__VA_ARGS__); case 200: return FN<float, 200>(__VA_ARGS__); \
    case 256: return FN<float, 256>(__VA_ARGS__); default: return FN<float, 0>(__VA_ARGS__); }
template <typename F>
static int sparse_local_fwd(const F* x, const F* mu, const F* sig, F* mean, F* cu, int64_t T, int64_t B, int64_t IN,
                            int64_t J) { return sparse_local_fwd_t<F, 0>(x, mu, sig, mean, cu, T, B, IN, J); }
template <>
int sparse_local_fwd<float>(const float* x, const float* mu, const float* sig, float* mean, float* cu, int64_t T,
                            int64_t B, int64_t IN, int64_t J) {
  SL_DISPATCH(sparse_local_fwd_t, x, mu, sig, mean, cu, T, B, IN, J) }
template <typename F>
static int sparse_local_bwd(const F* x, const F* sig, const F* gsum, const F* ks, F* gmu, F* gsig, int64_t T,
                            int64_t B, int64_t IN, int64_t J) {
  return sparse_local_bwd_t<F, 0>(x, sig, gsum, ks, gmu, gsig, T, B, IN, J); }
template <>
int sparse_local_bwd<float>(const float* x, const float* sig, const float* gsum, const float* ks, float* gmu,
                            float* gsig, int64_t T, int64_t B, int64_t IN, int64_t J) {
  SL_DISPATCH(sparse_local_bwd_t, x, sig, gsum, ks, gmu, gsig, T, B, IN, J) }
#undef SL_DISPATCH

// ---- the batch-1 input scan of local_linear: x (T, B*in) viewed as (T, B, in) -> active[i] (input i
// non-zero at some step and batch element), returns the number of active inputs; *tconst = every
// step equals the first; *nnz = the number of non-zero entries.
template <typename F>
static int64_t scan_input(const F* x, int64_t T, int64_t B, int64_t IN, unsigned char* active, int* tconst,
                          int64_t* nnz) {
  for (int64_t i = 0; i < IN; ++i) active[i] = 0;
  int64_t nz = 0;
  for (int64_t q = 0; q < T * B; ++q) {
    const F* row = x + q * IN;
    for (int64_t i = 0; i < IN; ++i) { const unsigned char a = row[i] != (F)0; active[i] |= a; nz += a; }
  }
  *nnz = nz;
  int64_t n = 0; for (int64_t i = 0; i < IN; ++i) n += active[i];
  int c = 1;
  for (int64_t t = 1; t < T && c; ++t) {
    const F* a = x; const F* b = x + t * B * IN;
    for (int64_t e = 0; e < B * IN; ++e) if (!(a[e] == b[e])) { c = 0; break; }
  }
  *tconst = c;
  return n;
}

// ---- standard normals (mesu_snn.kernels.noise): Philox4x32-10 (Salmon et al., SC'11; Random123) keyed by a
// 64-bit seed, counter = block index; each block's 4 words -> 2 Box-Muller pairs. Layout per chunk of L blocks
// (counters c*L .. c*L+L-1): out[4L c + l] = r1 cos(2pi u2), [+L] r1 sin, [+2L] r2 cos(2pi u4), [+3L] r2 sin, with
// u1 = 1 - (w0 >> 8) 2^-24 in (0, 1], u2 = (w1 >> 8) 2^-24 in [0, 1) (u3, u4 from w2, w3), r = sqrt(-2 ln u).
// Branch-free float arithmetic, no fused multiply-adds: the same bits on every x86-64 level (and at -O0).
static const int RNG_L = 64;
static inline float rng_bits_f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline uint32_t rng_f_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
// ln x for x in (0, 1] (Cephes logf polynomial, ~1 ulp)
static inline float rng_log01(float x) {
  uint32_t i = rng_f_bits(x);
  float fe = (float)((int)((i >> 23) & 0xff) - 126);
  float m = rng_bits_f((i & 0x7fffffu) | 0x3f000000u);   // [0.5, 1)
  float lo = (float)(m < 0.707106781186547524f);         // 1 or 0
  float f = (m - 1.0f) + lo * m;                          // 2m - 1 or m - 1 (both exact)
  fe = fe - lo;
  float z = f * f;
  float y = 7.0376836292E-2f;
  y = y * f - 1.1514610310E-1f; y = y * f + 1.1676998740E-1f; y = y * f - 1.2420140846E-1f;
  y = y * f + 1.4249322787E-1f; y = y * f - 1.6668057665E-1f; y = y * f + 2.0000714765E-1f;
  y = y * f - 2.4999993993E-1f; y = y * f + 3.3333331174E-1f;
  y = y * f * z;
  y = y + -2.12194440e-4f * fe;
  y = y - 0.5f * z;
  return (f + y) + 0.693359375f * fe;
}
// cos, sin of 2 pi u for u in [0, 1): quarter turns, Cephes sinf/cosf polynomials on [-pi/4, pi/4]
static inline void rng_sincos2pi(float u, float* c, float* s) {
  float q = std::nearbyint(u * 4.0f);                     // 0 .. 4
  float a = (u - q * 0.25f) * 6.28318530717958648f;       // u - q/4 exact, in [-1/8, 1/8]
  float z = a * a;
  float sp = ((-1.9515295891E-4f * z + 8.3321608736E-3f) * z - 1.6666654611E-1f) * z * a + a;
  float cp = ((2.443315711809948E-5f * z - 1.388731625493765E-3f) * z + 4.166664568298827E-2f) * z * z - 0.5f * z + 1.0f;
  int k = ((int)q) & 3;
  *c = (k == 0) ? cp : (k == 1) ? -sp : (k == 2) ? -cp : sp;
  *s = (k == 0) ? sp : (k == 1) ? cp : (k == 2) ? -sp : -cp;
}
static inline void rng_philox(uint64_t b0, uint32_t k0, uint32_t k1, uint32_t* c0, uint32_t* c1, uint32_t* c2,
                              uint32_t* c3) {
  for (int l = 0; l < RNG_L; ++l) { uint64_t b = b0 + l; c0[l] = (uint32_t)b; c1[l] = (uint32_t)(b >> 32); c2[l] = 0; c3[l] = 0; }
  for (int r = 0; r < 10; ++r) {
    for (int l = 0; l < RNG_L; ++l) {
      uint64_t p0 = (uint64_t)0xD2511F53u * c0[l], p1 = (uint64_t)0xCD9E8D57u * c2[l];
      uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[l] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3[l] ^ k1;
      c1[l] = (uint32_t)p1; c3[l] = (uint32_t)p0; c0[l] = n0; c2[l] = n2;
    }
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
}
static void rng_chunk(uint64_t b0, uint32_t k0, uint32_t k1, float* out) {
  uint32_t c0[RNG_L], c1[RNG_L], c2[RNG_L], c3[RNG_L];
  rng_philox(b0, k0, k1, c0, c1, c2, c3);
  float r[2 * RNG_L], cs[2 * RNG_L], sn[2 * RNG_L];
  for (int l = 0; l < RNG_L; ++l) {
    r[l] = std::sqrt(-2.0f * rng_log01(1.0f - (float)(c0[l] >> 8) * 5.9604644775390625e-8f));
    r[RNG_L + l] = std::sqrt(-2.0f * rng_log01(1.0f - (float)(c2[l] >> 8) * 5.9604644775390625e-8f));
  }
  for (int l = 0; l < RNG_L; ++l) {
    rng_sincos2pi((float)(c1[l] >> 8) * 5.9604644775390625e-8f, &cs[l], &sn[l]);
    rng_sincos2pi((float)(c3[l] >> 8) * 5.9604644775390625e-8f, &cs[RNG_L + l], &sn[RNG_L + l]);
  }
  for (int l = 0; l < RNG_L; ++l) {
    out[l] = r[l] * cs[l]; out[RNG_L + l] = r[l] * sn[l];
    out[2 * RNG_L + l] = r[RNG_L + l] * cs[RNG_L + l]; out[3 * RNG_L + l] = r[RNG_L + l] * sn[RNG_L + l];
  }
}
static void normal_fill(uint64_t seed, float* out, int64_t n) {
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const int64_t per = 4 * RNG_L, nc = n / per;
  for (int64_t c = 0; c < nc; ++c) rng_chunk((uint64_t)c * RNG_L, k0, k1, out + c * per);
  if (n % per) {
    float tmp[4 * RNG_L];
    rng_chunk((uint64_t)nc * RNG_L, k0, k1, tmp);
    std::memcpy(out + nc * per, tmp, sizeof(float) * (size_t)(n % per));
  }
}

// ---- optimizers: every value of n tensors finite?
template <typename F>
static int all_finite(void** ptrs, const int64_t* sizes, int64_t n) {
  for (int64_t q = 0; q < n; ++q) {
    const F* p = (const F*)ptrs[q];
    int bad = 0;
    const F big = std::numeric_limits<F>::max();
    for (int64_t e = 0; e < sizes[q]; ++e) bad |= !(std::fabs(p[e]) <= big);   // false for NaN and ±Inf
    if (bad) return 0;
  }
  return 1;
}

// One tensor of MESU (the constants are those of mesu_pairs below), branch-free in its loop so that it vectorises (the per-element arithmetic is
// the same in every variant: the results do not depend on the vector width). WRITE = false: returns
// 1 if some gradient is non-finite or some new mu non-finite or some new sigma non-finite or <= 0
// (a clamp could make a non-finite gradient's step finite: it is checked itself), nothing written.
template <typename F, bool CLIP, bool MP, bool WRITE>
static int mesu_tensor(F* mu, F* sg, const F* gm, const F* gs, int64_t N, F nmk, F kmp, F nlm, F nk2, F k2p,
                       F nls, F c, F nc) {
  const F big = std::numeric_limits<F>::max();
  int bad = 0;
  for (int64_t e = 0; e < N; ++e) {
    const F s = sg[e];
    F pmu = mu[e] * nmk;
    if (MP) pmu = pmu + kmp;
    pmu = pmu * s;
    F psg = s * s; psg = psg * nk2; psg = psg + k2p;
    if (!CLIP) {
      F t1 = nlm * s; t1 = t1 * gm[e]; pmu = pmu + t1;
      F t2 = nls * s; t2 = t2 * gs[e]; psg = psg + t2;
    } else {
      F a = s * gm[e]; a = a < nc ? nc : a; a = a > c ? c : a; F t1 = a * nlm; pmu = pmu + t1;
      F b = s * gs[e]; b = b < nc ? nc : b; b = b > c ? c : b; F t2 = b * nls; psg = psg + t2;
    }
    F dm = pmu * s; const F nmu = mu[e] + dm;
    F ds = psg * s; const F nsg = s + ds;
    if (WRITE) { mu[e] = nmu; sg[e] = nsg; }
    else bad |= (int)(!(std::fabs(nmu) <= big)) | (int)(!(nsg > (F)0)) | (int)(!(nsg <= big)) |   // NaN fails every compare
                (int)(!(std::fabs(gm[e]) <= big)) | (int)(!(std::fabs(gs[e]) <= big));          // a gradient too
  }
  return bad;
}

// MESU on n (mu, sigma) pairs, the formulas of mesu_snn.kernels.fused_update (same order).
// write = 0: nothing is written; returns 1 if every gradient and every new mu is finite and every new sigma finite
// and > 0, else 0 (the optimizers' "refuse a step that would poison the model" check, done
// before anything changes). write = 1: the pairs are updated in place; returns 1.
// c: nmk = -k, kmp = k*mu_prior (0 if mu_prior is 0), nlm = -lr_mu, nk2 = -k/2, k2p = k/2*sigma_prior^2,
// nls = -lr_sigma/2, clamp (< 0: none).
template <typename F>
static int mesu_pairs(void** mus, void** sigs, void** gmus, void** gsigs, const int64_t* sizes, int64_t n,
                      double nmk_d, double kmp_d, int has_mp, double nlm_d, double nk2_d, double k2p_d, double nls_d,
                      double clamp_d, int write) {
  const F nmk = (F)nmk_d, kmp = (F)kmp_d, nlm = (F)nlm_d, nk2 = (F)nk2_d, k2p = (F)k2p_d, nls = (F)nls_d;
  const bool clip = clamp_d >= 0; const F c = (F)clamp_d, nc = (F)(-clamp_d);
  for (int64_t q = 0; q < n; ++q) {
    F* mu = (F*)mus[q]; F* sg = (F*)sigs[q]; const F* gm = (const F*)gmus[q]; const F* gs = (const F*)gsigs[q];
    const int64_t N = sizes[q];
#define MESU_T(C, P, W) mesu_tensor<F, C, P, W>(mu, sg, gm, gs, N, nmk, kmp, nlm, nk2, k2p, nls, c, nc)
    int bad;
    if (write) bad = clip ? (has_mp ? MESU_T(true, true, true) : MESU_T(true, false, true))
                          : (has_mp ? MESU_T(false, true, true) : MESU_T(false, false, true));
    else bad = clip ? (has_mp ? MESU_T(true, true, false) : MESU_T(true, false, false))
                    : (has_mp ? MESU_T(false, true, false) : MESU_T(false, false, false));
#undef MESU_T
    if (bad) return 0;
  }
  return 1;
}

extern "C" {
int mesu_abi_version() { return 6; }
// n standard normals (float) from the Philox stream keyed by seed (see normal_fill)
int normal_f32(uint64_t seed, float* out, int64_t n) { normal_fill(seed, out, n); return 0; }
// the raw Philox4x32-10 words of blocks first .. first+n-1 (4 per block), for the known-answer tests
int philox_words(uint64_t seed, uint64_t first, int64_t n, uint32_t* out) {
  uint32_t c0[RNG_L], c1[RNG_L], c2[RNG_L], c3[RNG_L];
  for (int64_t b = 0; b < n; b += RNG_L) {
    rng_philox(first + (uint64_t)b, (uint32_t)seed, (uint32_t)(seed >> 32), c0, c1, c2, c3);
    for (int64_t l = 0; l < RNG_L && b + l < n; ++l) {
      out[4 * (b + l)] = c0[l]; out[4 * (b + l) + 1] = c1[l]; out[4 * (b + l) + 2] = c2[l]; out[4 * (b + l) + 3] = c3[l]; }
  }
  return 0; }

// one set of entry points per dtype: NAME_f32 (float) and NAME_f64 (double)
#define MESU_ENTRY_POINTS(SFX, F) \
int lif_forward_##SFX(const F* x, const F* v0, F* s, F* u, int64_t O, int64_t T, int64_t I, double beta, double thr, \
                      int reset, int delay, double vleak, double vreset, double scale) { \
  F* buf = (F*)std::malloc(sizeof(F) * 2 * (I > 0 ? I : 1)); \
  if (!buf) return 1; \
  lif_fwd<F>(x, v0, s, u, O, T, I, beta, thr, reset, delay, vleak, vreset, scale, buf, buf + I); \
  std::free(buf); \
  return 0; } \
int lif_backward_##SFX(const F* u, const F* gs, const F* gm, F* a, int64_t O, int64_t T, int64_t I, double beta, \
                       double thr, int reset, int delay, int detach, double vreset, int sur, double p) { \
  lif_bwd<F>(u, gs, gm, a, O, T, I, beta, thr, reset, delay, detach, vreset, sur, p); return 0; } \
int pair_products_##SFX(const F* x, F* zu, int64_t T, int64_t E) { pair_products<F>(x, zu, T, E); return 0; } \
int64_t local_factor_##SFX(const F* cu, const F* z, F* uv, unsigned char* bad, int64_t T, int64_t N, int64_t M, \
                           double rtol) { return local_factor<F>(cu, z, uv, bad, T, N, M, rtol); } \
int local_k_##SFX(const F* g, const F* uv, F* ks, F* kb, int64_t T, int64_t N, int64_t M) { \
  local_k<F>(g, uv, ks, kb, T, N, M); return 0; } \
int gw_backward_##SFX(const F* g, const F* eps, F* gmu, F* gsig, int64_t M, int64_t W) { \
  gw_backward<F>(g, eps, gmu, gsig, M, W); return 0; } \
int64_t scan_input_##SFX(const F* x, int64_t T, int64_t B, int64_t IN, unsigned char* active, int* tconst, \
                         int64_t* nnz) { return scan_input<F>(x, T, B, IN, active, tconst, nnz); } \
int sparse_local_fwd_##SFX(const F* x, const F* mu, const F* sig, F* mean, F* cu, int64_t T, int64_t B, int64_t IN, \
                           int64_t J) { return sparse_local_fwd<F>(x, mu, sig, mean, cu, T, B, IN, J); } \
int sparse_local_bwd_##SFX(const F* x, const F* sig, const F* gsum, const F* ks, F* gmu, F* gsig, int64_t T, \
                           int64_t B, int64_t IN, int64_t J) { \
  return sparse_local_bwd<F>(x, sig, gsum, ks, gmu, gsig, T, B, IN, J); } \
int mc_nll_##SFX(const F* o, const int64_t* y, F* g, F* loss, int64_t M, int64_t B, int64_t C, double scale) { \
  return mc_nll<F>(o, y, g, loss, M, B, C, scale); } \
int all_finite_##SFX(void** ptrs, const int64_t* sizes, int64_t n) { return all_finite<F>(ptrs, sizes, n); } \
int mesu_pairs_##SFX(void** mus, void** sigs, void** gmus, void** gsigs, const int64_t* sizes, int64_t n, double nmk, \
                     double kmp, int has_mp, double nlm, double nk2, double k2p, double nls, double clamp, int write) { \
  return mesu_pairs<F>(mus, sigs, gmus, gsigs, sizes, n, nmk, kmp, has_mp, nlm, nk2, k2p, nls, clamp, write); } \
/* one group: ptrs = [mu..., sigma..., gmu..., gsigma...]; 0 (nothing changed) if a gradient is not */ \
/* finite or the step would make a mu non-finite or a sigma non-finite or <= 0 */ \
int mesu_step_##SFX(void** ptrs, const int64_t* sizes, int64_t n, double nmk, double kmp, int has_mp, double nlm, \
                    double nk2, double k2p, double nls, double clamp) { \
  /* the check pass covers the gradients too (one pass over the four arrays instead of three) */ \
  if (!mesu_pairs<F>(ptrs, ptrs + n, ptrs + 2 * n, ptrs + 3 * n, sizes, n, nmk, kmp, has_mp, nlm, nk2, k2p, nls, clamp, 0)) \
    return 0; \
  mesu_pairs<F>(ptrs, ptrs + n, ptrs + 2 * n, ptrs + 3 * n, sizes, n, nmk, kmp, has_mp, nlm, nk2, k2p, nls, clamp, 1); \
  return 1; }

MESU_ENTRY_POINTS(f32, float)
MESU_ENTRY_POINTS(f64, double)
#undef MESU_ENTRY_POINTS
}
"""

#: compiler flags; -ffp-contract=off keeps every multiply and add separately rounded (as torch's ops);
#: -fno-math-errno lets sqrt vectorise (no errno to set; the results are the same)
FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-std=c++14"]

_LOCK = threading.Lock()
_STATE: dict = {}


def cache_dir() -> Path:
    """Where the compiled library is kept (see the module docstring)."""
    root = os.environ.get("MESU_SNN_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mesu_snn"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _arch_flags() -> list[str]:
    """The x86-64 micro-architecture level this CPU runs (as torch sees it): vector width for the loops.
    The flags do not allow fused multiply-adds (``-ffp-contract=off``), so the results do not depend on it."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        return []
    return {"AVX512": ["-march=x86-64-v4"], "AVX2": ["-march=x86-64-v3"]}.get(cap, [])


def _compile(cxx: str, flags: list[str]) -> Path:
    key = hashlib.sha256("\0".join([SOURCE, *flags, platform.machine(), platform.system()]).encode()).hexdigest()[:16]
    d = cache_dir()
    lib = d / f"mesu_native_{key}.so"
    if not lib.exists():
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            src = Path(tmp) / "native.cpp"
            src.write_text(SOURCE)
            out = Path(tmp) / lib.name
            proc = subprocess.run([cxx, *flags, str(src), "-o", str(out)], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"{cxx} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
            os.replace(out, lib)          # atomic: a concurrent builder sees the old file or the new one
    return lib


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    arch = _arch_flags()
    try:
        lib = _compile(cxx, FLAGS + arch)
    except RuntimeError:
        if not arch:
            raise
        lib = _compile(cxx, FLAGS)        # an older compiler without the -march level
    cdll = ctypes.CDLL(str(lib))
    if cdll.mesu_abi_version() != 6:
        raise RuntimeError(f"{lib} has an unexpected ABI version")
    p, i64, dbl, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    cdll.normal_f32.argtypes = [ctypes.c_uint64, p, i64]
    cdll.normal_f32.restype = cint
    cdll.philox_words.argtypes = [ctypes.c_uint64, ctypes.c_uint64, i64, p]
    cdll.philox_words.restype = cint
    for suffix in ("f32", "f64"):
        f = getattr(cdll, f"lif_forward_{suffix}")
        f.argtypes = [p, p, p, p, i64, i64, i64, dbl, dbl, cint, cint, dbl, dbl, dbl]
        f.restype = cint
        b = getattr(cdll, f"lif_backward_{suffix}")
        b.argtypes = [p, p, p, p, i64, i64, i64, dbl, dbl, cint, cint, cint, dbl, cint, dbl]
        b.restype = cint
        f = getattr(cdll, f"pair_products_{suffix}")
        f.argtypes = [p, p, i64, i64]
        f.restype = cint
        f = getattr(cdll, f"local_factor_{suffix}")
        f.argtypes = [p, p, p, p, i64, i64, i64, dbl]
        f.restype = i64
        f = getattr(cdll, f"local_k_{suffix}")
        f.argtypes = [p, p, p, p, i64, i64, i64]
        f.restype = cint
        f = getattr(cdll, f"gw_backward_{suffix}")
        f.argtypes = [p, p, p, p, i64, i64]
        f.restype = cint
        f = getattr(cdll, f"scan_input_{suffix}")
        f.argtypes = [p, i64, i64, i64, p, p, p]
        f.restype = i64
        f = getattr(cdll, f"sparse_local_fwd_{suffix}")
        f.argtypes = [p, p, p, p, p, i64, i64, i64, i64]
        f.restype = cint
        f = getattr(cdll, f"sparse_local_bwd_{suffix}")
        f.argtypes = [p, p, p, p, p, p, i64, i64, i64, i64]
        f.restype = cint
        f = getattr(cdll, f"mc_nll_{suffix}")
        f.argtypes = [p, p, p, p, i64, i64, i64, dbl]
        f.restype = cint
        f = getattr(cdll, f"all_finite_{suffix}")
        f.argtypes = [p, p, i64]
        f.restype = cint
        f = getattr(cdll, f"mesu_step_{suffix}")
        f.argtypes = [p, p, i64, dbl, dbl, cint, dbl, dbl, dbl, dbl, dbl]
        f.restype = cint
        f = getattr(cdll, f"mesu_pairs_{suffix}")
        f.argtypes = [p, p, p, p, p, i64, dbl, dbl, cint, dbl, dbl, dbl, dbl, dbl, cint]
        f.restype = cint
    return cdll


def library() -> ctypes.CDLL | None:
    """The loaded library, building it on first call; None if it cannot be had (logged once)."""
    if "lib" in _STATE:
        return _STATE["lib"]
    with _LOCK:
        if "lib" not in _STATE:
            lib = None
            if os.environ.get("MESU_SNN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
                log.info("mesu_snn native kernels disabled by MESU_SNN_NATIVE")
            else:
                try:
                    lib = _build()
                except Exception as e:  # noqa: BLE001 - any failure means: use the torch code
                    log.warning("mesu_snn: native kernels unavailable, using the pure-PyTorch path (%s)", e)
            _STATE["lib"] = lib
    return _STATE["lib"]


def available() -> bool:
    """Whether the compiled library can be used (builds it on first call)."""
    return library() is not None


_DTYPES = {torch.float32: "f32", torch.float64: "f64"}


def pointers(tensors) -> tuple:
    """(void* array, int64 array of sizes, n) of a list of contiguous tensors, for the list loops."""
    n = len(tensors)
    ptrs = (ctypes.c_void_p * n)(*[t.data_ptr() for t in tensors])
    sizes = (ctypes.c_int64 * n)(*[t.numel() for t in tensors])
    return ptrs, sizes, n


def suffix(t: torch.Tensor) -> str | None:
    """'f32'/'f64' for a CPU tensor the loops handle, else None."""
    return _DTYPES.get(t.dtype) if t.is_cpu else None
