"""The standard normal draws of the weight noise ε and of the local estimator's z: one home for them.

``standard_normal(shape, generator, dtype, device)`` is ``torch.randn`` except for float32 CPU draws
while the compiled loops are on (:mod:`mesu_snn.kernels.native`; ``fast_paths(native=True)``, the
default): those come from a counter-based generator in one compiled, vectorised pass, about 3× faster
than ``torch.randn`` at the batch-1 sizes (10,000 normals: 14 µs against 46 µs, 2-core AMD EPYC VM).

The draw: one 62-bit key is taken from ``generator`` (``torch.randint``, so the torch generator
advances and ``torch.manual_seed`` / ``Generator.manual_seed`` reproduce the draws), then the Philox4x32-10
stream of that key (Salmon et al., SC'11, the generator of Random123 and cuRAND; known-answer tested)
gives uniforms with 24-bit resolution, turned into normals by Box–Muller in float arithmetic (logarithm
and sine/cosine polynomials accurate to ~1e-7; tails to |z| ≤ 5.77, as torch's float sampler). The draws
are exact standard normals to float rounding, independent across calls, and the same bits on every x86-64
level; they are not ``torch.randn``'s numbers: ``fast_paths(native=False)`` (or ``MESU_SNN_NATIVE=0``)
draws with ``torch.randn`` again. Both the autograd path and :class:`mesu_snn.rules.StreamingStep` draw
here, so they stay equal draw for draw in either setting. Tests: tests/test_kernels_noise.py.
"""
from __future__ import annotations

import torch

from . import native
from .switch import native_enabled

__all__ = ["standard_normal"]


def _native_lib(dtype, device, generator):
    """The compiled library if this draw takes the compiled generator, else None."""
    if dtype is torch.float32 and device is not None and torch.device(device).type == "cpu" and native_enabled() \
            and (generator is None or generator.device.type == "cpu"):
        return native.library()
    return None


def standard_normal(shape, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                    device=None) -> torch.Tensor:
    """A tensor of ``shape`` of independent N(0, 1) draws (see the module docstring for which generator;
    ``device=None``: the default device, always drawn by ``torch.randn``)."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if torch.compiler.is_compiling():
        # under torch.compile: the same draw as eager, through an opaque op (no graph break; torch >= 2.4,
        # older versions draw with torch.randn under compile)
        if _HAS_OP and _compiled_draw(dtype, device, generator is None or generator.device.type == "cpu"):
            return torch.ops.mesu_snn.philox_normal(_key(generator), list(shape))
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    lib = _native_lib(dtype, device, generator)
    if lib is not None:
        out = torch.empty(shape, dtype=dtype, device="cpu")
        if out.numel():
            lib.normal_f32(int(_key(generator)), out.data_ptr(), out.numel())
        return out
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def _key(generator):
    """The draw's 62-bit Philox key, from ``generator`` (eager and compiled take the same op)."""
    return torch.randint(0, 2 ** 62, (), generator=generator, dtype=torch.int64)


def _compiled_draw(dtype, device, cpu_generator: bool) -> bool:
    """Whether eager would take the compiled generator (a constant of the traced graph)."""
    return cpu_generator and _native_lib(dtype, device, None) is not None


_HAS_OP = hasattr(torch.library, "custom_op") and hasattr(torch.compiler, "assume_constant_result")
if _HAS_OP:
    _compiled_draw = torch.compiler.assume_constant_result(_compiled_draw)

    @torch.library.custom_op("mesu_snn::philox_normal", mutates_args=())
    def _philox_normal(key: torch.Tensor, shape: list[int]) -> torch.Tensor:
        out = torch.empty(shape, dtype=torch.float32)
        if out.numel():
            native.library().normal_f32(int(key), out.data_ptr(), out.numel())
        return out

    @_philox_normal.register_fake
    def _(key, shape):
        return torch.empty(shape, dtype=torch.float32)
