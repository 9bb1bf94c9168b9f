"""Optional compiled loops for the batch-1 hot path, built lazily with the system C++ compiler.

At batch 1 a training step is hundreds of tiny tensor ops, each costing a few µs of dispatch for
nanoseconds of arithmetic. The loops here do a whole op sequence in one call on raw CPU memory:

* ``lif_forward`` / ``lif_backward``: the fused LIF sequence of :mod:`mesu_snn.kernels.lif_fused`
  (its ``_forward`` loop over time, and its vectorised surrogate pass plus the backward recurrence)
  in one pass each. The arithmetic is the same float operations in the same order (compiled with
  ``-ffp-contract=off``: no fused multiply-adds), so the spikes and the membranes equal the torch
  kernel's bit for bit; gradients agree to rounding (the torch kernel's in-place ``addcmul_``
  may fuse a multiply-add).

Nothing is built at install time. The first call compiles one small C++ file (no torch headers, a
second or two) into a cache directory (``$MESU_SNN_CACHE``, else ``$XDG_CACHE_HOME/mesu_snn``, else
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

// reset: 0 subtract, 1 zero, 2 none. sur: 0 fast sigmoid, 1 atan, 2 heaviside.
// Layout: x, s, u are (O, T, I) contiguous; v0 is (O, I) or null.

template <typename F>
static void lif_fwd(const F* x, const F* v0, F* s, F* u, int64_t O, int64_t T, int64_t I,
                    double beta_d, double thr_d, int reset, int delay, double vleak_d, double vreset_d,
                    double scale_d, F* v, F* r) {
  const F beta = (F)beta_d, thr = (F)thr_d, vleak = (F)vleak_d, vreset = (F)vreset_d, scale = (F)scale_d;
  const bool scaled = scale_d != 1.0, leak0 = vleak_d == 0.0;
  const bool delayed = delay && reset != 2;
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
        if (delayed && reset == 1) vv = r[i] != (F)0 ? vreset : vv;
        F d = xt[i];
        if (scaled) d = d * scale;
        F w;
        if (leak0) {
          w = vv * beta;
        } else {
          w = vv - vleak;
          w = w * beta;
          w = w + vleak;
        }
        w = w + d;
        if (delayed && reset == 0) { F rt = r[i] * thr; w = w - rt; }
        const F sp = w > thr ? (F)1 : (F)0;
        ut[i] = w;
        st[i] = sp;
        if (delay || reset == 2) { v[i] = w; r[i] = sp; }
        else if (reset == 0) { F st_thr = sp * thr; v[i] = w - st_thr; }
        else { v[i] = sp != (F)0 ? vreset : w; }
      }
    }
  }
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

extern "C" {
int mesu_abi_version() { return 1; }

int lif_forward_f32(const float* x, const float* v0, float* s, float* u, int64_t O, int64_t T, int64_t I,
                    double beta, double thr, int reset, int delay, double vleak, double vreset, double scale) {
  float* buf = (float*)std::malloc(sizeof(float) * 2 * (I > 0 ? I : 1));
  if (!buf) return 1;
  lif_fwd<float>(x, v0, s, u, O, T, I, beta, thr, reset, delay, vleak, vreset, scale, buf, buf + I);
  std::free(buf);
  return 0;
}
int lif_forward_f64(const double* x, const double* v0, double* s, double* u, int64_t O, int64_t T, int64_t I,
                    double beta, double thr, int reset, int delay, double vleak, double vreset, double scale) {
  double* buf = (double*)std::malloc(sizeof(double) * 2 * (I > 0 ? I : 1));
  if (!buf) return 1;
  lif_fwd<double>(x, v0, s, u, O, T, I, beta, thr, reset, delay, vleak, vreset, scale, buf, buf + I);
  std::free(buf);
  return 0;
}
int lif_backward_f32(const float* u, const float* gs, const float* gm, float* a, int64_t O, int64_t T, int64_t I,
                     double beta, double thr, int reset, int delay, int detach, double vreset, int sur, double p) {
  lif_bwd<float>(u, gs, gm, a, O, T, I, beta, thr, reset, delay, detach, vreset, sur, p);
  return 0;
}
int lif_backward_f64(const double* u, const double* gs, const double* gm, double* a, int64_t O, int64_t T, int64_t I,
                     double beta, double thr, int reset, int delay, int detach, double vreset, int sur, double p) {
  lif_bwd<double>(u, gs, gm, a, O, T, I, beta, thr, reset, delay, detach, vreset, sur, p);
  return 0;
}
}
"""

#: compiler flags; -ffp-contract=off keeps every multiply and add separately rounded (as torch's ops)
FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-std=c++14"]

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


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    key = hashlib.sha256("\0".join([SOURCE, *FLAGS, platform.machine(), platform.system()]).encode()).hexdigest()[:16]
    d = cache_dir()
    lib = d / f"mesu_native_{key}.so"
    if not lib.exists():
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            src = Path(tmp) / "native.cpp"
            src.write_text(SOURCE)
            out = Path(tmp) / lib.name
            proc = subprocess.run([cxx, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"{cxx} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
            os.replace(out, lib)          # atomic: a concurrent builder sees the old file or the new one
    cdll = ctypes.CDLL(str(lib))
    if cdll.mesu_abi_version() != 1:
        raise RuntimeError(f"{lib} has an unexpected ABI version")
    p, i64, dbl, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    for suffix in ("f32", "f64"):
        f = getattr(cdll, f"lif_forward_{suffix}")
        f.argtypes = [p, p, p, p, i64, i64, i64, dbl, dbl, cint, cint, dbl, dbl, dbl]
        f.restype = cint
        b = getattr(cdll, f"lif_backward_{suffix}")
        b.argtypes = [p, p, p, p, i64, i64, i64, dbl, dbl, cint, cint, cint, dbl, cint, dbl]
        b.restype = cint
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


def suffix(t: torch.Tensor) -> str | None:
    """'f32'/'f64' for a CPU tensor the loops handle, else None."""
    return _DTYPES.get(t.dtype) if t.device.type == "cpu" else None
