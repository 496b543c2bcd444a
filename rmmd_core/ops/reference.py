"""Pure-PyTorch references for the fused ops: the truth every backend is tested against.

Nothing here is fast; everything here is simple, runs on any device PyTorch supports, is
differentiable where the op is, and compiles with ``torch.compile(fullgraph=True, dynamic=True)``
(see ``_mul_hi_lo`` and ``_scalar`` for the two formulation choices that make Inductor cope). The Philox stream is the one of Triton's ``tl.randn`` and of
``csrc/common/philox.h``; the constants are copied from ``triton/language/random.py`` (triton 3.9.0,
MIT licence), and ``tests/test_posterior_step_op.py`` checks them against the installed triton.

Philox needs unsigned 32-bit arithmetic, which PyTorch lacks on most devices (uint32 tensors have no
shifts); it is emulated in int64 tensors holding values in [0, 2**32), masked after every operation.
"""

from __future__ import annotations

import torch

__all__ = ["COTANGENT_STATS", "aux_loss_ref", "philox4x32_ref", "philox_randn_ref", "posterior_step_ref", "renoise_ref",
           "rmmd_cotangent_ref"]

_MASK32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57  # round multipliers
_N_ROUNDS = 10
_UNIFORM_SCALE = 4.6566127342e-10  # float32(scale): (2**31 - 1) * scale < 1 after rounding
_TWO_PI = 6.283185307179586
_MIN_UNIFORM = 1.0e-7  # clamps log(0); bounds |n| by sqrt(-2 ln 1e-7) ~= 5.68


def _mul_hi_lo(const: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``const * x`` for a 32-bit constant and int64 ``x`` in [0, 2**32).

    The 64-bit product wraps in int64 (two's complement on every PyTorch backend: CPU scalar and
    vector kernels, CUDA, Inductor's C++ and Triton code); masking after the shift recovers the
    unsigned high word. One product per multiply keeps each Philox state word used once per round,
    which keeps Inductor's fused expression linear in the rounds (a 16-bit-limb split reuses every
    word several times per round, and Inductor's lowering then grows exponentially with the rounds).
    tests/test_posterior_step_op.py checks this against Python's exact integers.
    """
    product = const * x
    return (product >> 32) & _MASK32, product & _MASK32


def _scalar(value: int | torch.Tensor, device) -> torch.Tensor:
    # seed / offset enter as 0-d int64 tensors, not Python ints: under torch.compile a changing seed
    # becomes a SymInt, and Inductor's CPU codegen miscompiles bit ops on symbolic ints (torch 2.13:
    # "Vectorized<float> >> shift"); tensor arithmetic compiles like the rest of the stream.
    # A one-element int64 tensor (a device seed, see dispatch.posterior_step) is used as it is: the
    # reference then never reads it on the host either, and the arithmetic is the same.
    if isinstance(value, torch.Tensor):
        return value.reshape(()).to(device=device, dtype=torch.int64)
    return torch.tensor(value, dtype=torch.int64, device=device)


def _counters(numel: int, offset: int | torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Low / high 32 bits of the uint64 counters ``offset + i`` for i < numel."""
    i = torch.arange(numel, dtype=torch.int64, device=device)
    off = _scalar(offset, device)
    lo = (i & _MASK32) + (off & _MASK32)  # < 2**33: the carry sits in bit 32
    hi = ((i >> 32) + (off >> 32) + (lo >> 32)) & _MASK32
    return lo & _MASK32, hi


def philox4x32_ref(numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor = 0,
                   device=None) -> tuple[torch.Tensor, ...]:
    """The four 32-bit Philox-4x32-10 outputs for counters ``offset + i``, i in [0, numel).

    Counter ``(c0, c1, c2, c3) = (lo32(offset + i), hi32(offset + i), 0, 0)``, key ``(lo32(seed),
    hi32(seed))``: the layout of Triton's ``tl.randint4x(seed, offset + i)`` with int64 offsets.

    Args:
        numel: number of counters.
        seed: integer in [0, 2**63), or a one-element int64 tensor holding one (read on its device).
        offset: integer in [0, 2**63), or such a tensor.
        device: where to compute.

    Returns:
        Four int64 tensors of shape (numel,) with values in [0, 2**32).
    """
    c0, c1 = _counters(numel, offset, device)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    key = _scalar(seed, c0.device)
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    for _ in range(_N_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def _uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for 32-bit values: fold the sign half with ~x, scale in fp32."""
    folded = torch.where(x >= 2**31, x ^ _MASK32, x)  # == ~int32(x) for "negative" x; in [0, 2**31)
    scale = torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=x.device)
    return folded.to(torch.float32) * scale


def philox_randn_ref(numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor = 0, device=None) -> torch.Tensor:
    """Standard normals ``n[i] = tl.randn(seed, offset + i)`` for i in [0, numel), in float32.

    Box-Muller on the first two Philox outputs (the sine half is discarded, as in ``tl.randn``)::

        u0, u1 = uniform(r0), uniform(r1)
        n = sqrt(-2 log max(1e-7, u0)) * cos(2 pi u1)

    Integer stages are bit-exact with every backend; log / cos may differ by a few float32 ULP
    between libraries.

    Args:
        numel: number of draws.
        seed: integer in [0, 2**63), or a one-element int64 tensor holding one.
        offset: integer >= 0 (or such a tensor); ``philox_randn_ref(n, s, o)[k:] == philox_randn_ref(n - k, s, o + k)``.
        device: where to compute (default: CPU).

    Returns:
        float32 tensor of shape (numel,).
    """
    r0, r1, _, _ = philox4x32_ref(numel, seed, offset, device)
    u0 = torch.clamp_min(_uint_to_uniform(r0), _MIN_UNIFORM)
    theta = torch.tensor(_TWO_PI, dtype=torch.float32, device=u0.device) * _uint_to_uniform(r1)
    radius = torch.sqrt(-2.0 * torch.log(u0))
    return radius * torch.cos(theta)


def posterior_step_ref(z_t: torch.Tensor, x_hat: torch.Tensor, A: torch.Tensor, C: torch.Tensor,
                       gamma: torch.Tensor, seed: int | torch.Tensor,
                       offset: int | torch.Tensor = 0) -> torch.Tensor:
    """Posterior / DDIM(eta) step (method.md §a.4, §e K1), pure PyTorch::

        z_s[b, j] = A[b] * z_t[b, j] + C[b] * x_hat[b, j] + gamma[b] * n[b * D + j]

    with ``n = philox_randn_ref(B * D, seed, offset)`` indexed by the flat row-major *logical* index,
    so strided inputs give the same result as their contiguous copies.

    Computed in float32 (float64 for float64 data), rounded once to the input dtype. The coefficients
    are read in that precision too, and are treated as constants (detached), as the fused kernels do:
    gradients flow to ``z_t`` (A[b] * grad) and ``x_hat`` (C[b] * grad) only.

    Args:
        z_t: (B, ...) float32 / float64 / float16 / bfloat16, the noisy state at time t.
        x_hat: same shape, dtype and device as z_t, the denoiser's x-prediction.
        A, C, gamma: (B,) floating per-sample coefficients (typically float64); see method.md §a.4.
        seed: Philox key in [0, 2**63): an int, or a one-element int64 tensor (not read on the host).
        offset: first Philox counter, >= 0: an int or such a tensor.

    Returns:
        z_s: new contiguous tensor with z_t's shape and dtype.
    """
    opmath = torch.float64 if z_t.dtype == torch.float64 else torch.float32
    batch = z_t.shape[0]
    bshape = (batch,) + (1,) * (z_t.dim() - 1)

    def coef(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=z_t.device, dtype=opmath).reshape(bshape)

    out = coef(A) * z_t.to(opmath) + coef(C) * x_hat.to(opmath)
    noise = philox_randn_ref(z_t.numel(), seed, offset, z_t.device).reshape(z_t.shape).to(opmath)
    out = out + coef(gamma) * noise
    return out.to(z_t.dtype).contiguous()


COTANGENT_STATS = ("surrogate", "l2", "sq_norm_mm", "sq_norm_reward", "sq_norm_anchor", "weight")
"""Column names of the (B, 6) per-sample statistics returned by the rmmd_cotangent op."""


def rmmd_cotangent_ref(x0: torch.Tensor, m_stu: torch.Tensor, m_ref: torch.Tensor, g_R: torch.Tensor | None,
                       anchor: torch.Tensor | None, w: torch.Tensor, lam: float, lam_reg: float, scale: float,
                       dmd: bool = False, dmd_eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """RMMD cotangent assembly with its per-sample logging statistics (method.md §c.6 step 7, §e K5)::

        w_eff[b] = w[b] / (mabs(x0[b] - m_ref[b]) + dmd_eps)   if dmd (DMD normaliser, §d.4), else w[b]
        g[b]     = scale * ( w_eff[b] (m_stu[b] - m_ref[b]) - lam g_R[b] + 2 lam_reg (x0[b] - anchor[b]) )
                 = (w_eff[b] d) * scale - (scale lam) g_R[b] + (2 scale lam_reg) (x0[b] - anchor[b])   (as computed)

    and, per sample b (D values each; the norms are of the three *scaled* terms of g)::

        stats[b] = [ (1/D) <x0, w_eff (m_stu - m_ref)>,     surrogate of the MM loss
                     (1/D) ||x0 - anchor||^2,                L2 anchor term (0 without anchor)
                     ||scale w_eff (m_stu - m_ref)||^2,      squared norm of the MM term
                     ||scale lam g_R||^2,                    squared norm of the reward term (0 without g_R)
                     ||2 scale lam_reg (x0 - anchor)||^2,    squared norm of the anchor term (0 without anchor)
                     w_eff ]

    The DMD normaliser is under stop-gradient (as in DMD); everything else is differentiable. Computed in
    float32 (float64 for float64 data), g rounded once to x0's dtype.

    Args:
        x0: (B, ...) float32 / float64 / float16 / bfloat16, the student output x̂_0.
        m_stu, m_ref: same shape, dtype and device: the auxiliary's and the reference's moments.
        g_R: same shape or None: the reward-gradient term (multiplied by ``lam``).
        anchor: same shape or None: the frozen phase-1 student's output a.
        w: (B,) floating per-sample MM weight w(s).
        lam, lam_reg, scale: Python floats (scale is 1/(N·D) in the engine).
        dmd: use the DMD-style per-sample normaliser; dmd_eps: its epsilon (explicit, > 0).

    Returns:
        g: new contiguous tensor shaped like x0, x0's dtype.
        stats: (B, 6) float32 (float64 for float64 data), columns ``COTANGENT_STATS``.
    """
    opmath = torch.float64 if x0.dtype == torch.float64 else torch.float32
    batch = x0.shape[0]
    D = x0[0].numel() if batch > 0 else 0
    bshape = (batch,) + (1,) * (x0.dim() - 1)
    X, diff = x0.to(opmath), m_stu.to(opmath) - m_ref.to(opmath)
    w_eff = w.to(device=x0.device, dtype=opmath)
    if dmd:
        mabs = (X - m_ref.to(opmath)).detach().abs().reshape(batch, -1).mean(1)
        w_eff = w_eff / (mabs + dmd_eps)
    g_mm = w_eff.reshape(bshape) * diff
    zero = X.new_zeros(batch)

    def per_sample_sum(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, -1).sum(1)

    # Each term is scaled by its own coefficient (products of Python floats, rounded once to opmath) and
    # the terms are summed in order: the kernels use the same association, and so did the unfused engine.
    g = g_mm * scale
    sq_reward = sq_anchor = l2 = zero
    if g_R is not None:
        g_r = g_R.to(opmath)
        g = g - (lam * scale) * g_r
        sq_reward = per_sample_sum((scale * lam * g_r) ** 2)
    if anchor is not None:
        e = X - anchor.to(opmath)
        g = g + (2.0 * lam_reg * scale) * e
        l2 = per_sample_sum(e * e) / max(D, 1)
        sq_anchor = per_sample_sum((2.0 * scale * lam_reg * e) ** 2)
    stats = torch.stack([per_sample_sum(X * g_mm) / max(D, 1), l2, per_sample_sum((scale * g_mm) ** 2), sq_reward,
                         sq_anchor, w_eff], dim=1)
    return g.to(x0.dtype).contiguous(), stats


def aux_loss_ref(o: torch.Tensor, x0: torch.Tensor, m_ref: torch.Tensor,
                 w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Auxiliary loss and its output gradient (method.md §c.6 step 8, §e K6)::

        loss[b] = w[b] (1/D) ( ||x0[b] - o[b]||^2 + ||m_ref[b] - o[b]||^2 )
        grad    = d(mean_b loss[b]) / do = (2 w[b] / (B D)) ((o - x0) + (o - m_ref))

    x0 and m_ref are targets (the engine passes sg(x̂_0) and sg(m_ref)). Computed in float32 (float64
    for float64 data); grad rounded once to o's dtype. Differentiable in every input.

    Args:
        o: (B, ...) float32 / float64 / float16 / bfloat16: the auxiliary's output φ(z_s).
        x0, m_ref: same shape, dtype and device.
        w: (B,) floating per-sample weight w_aux(s).

    Returns:
        loss: (B,) float32 (float64 for float64 data).
        grad: like o, contiguous.
    """
    opmath = torch.float64 if o.dtype == torch.float64 else torch.float32
    batch = o.shape[0]
    D = max(o[0].numel(), 1) if batch > 0 else 1
    bshape = (batch,) + (1,) * (o.dim() - 1)
    O = o.to(opmath)
    e_x, e_m = O - x0.to(opmath), O - m_ref.to(opmath)
    w_op = w.to(device=o.device, dtype=opmath)
    loss = w_op * (e_x * e_x + e_m * e_m).reshape(batch, -1).sum(1) / D
    coef = (2.0 / (max(batch, 1) * D)) * w_op
    grad = coef.reshape(bshape) * (e_x + e_m)
    return loss, grad.to(o.dtype).contiguous()


def renoise_ref(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, seed: int | torch.Tensor,
                offset: int | torch.Tensor = 0) -> torch.Tensor:
    """Forward (re-)noising with in-kernel noise (method.md §c.6 step 2, §e K2)::

        x_t[b, j] = alpha[b] * x[b, j] + sigma[b] * n[b * D + j],    n = philox_randn_ref(B * D, seed, offset)

    the same noise stream, indexing and precision rules as :func:`posterior_step_ref` (which this is with
    A = alpha, C = 0, gamma = sigma). alpha and sigma are constants (detached): grad_x = alpha[b] * grad.

    Args:
        x: (B, ...) float32 / float64 / float16 / bfloat16, the clean (or rolled-out) sample.
        alpha, sigma: (B,) floating per-sample schedule values (float64 recommended).
        seed: Philox key in [0, 2**63). offset: first Philox counter, >= 0. Each an int or a one-element
            int64 tensor (not read on the host).

    Returns:
        x_t: new contiguous tensor with x's shape and dtype.
    """
    opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
    bshape = (x.shape[0],) + (1,) * (x.dim() - 1)

    def coef(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=x.device, dtype=opmath).reshape(bshape)

    noise = philox_randn_ref(x.numel(), seed, offset, x.device).reshape(x.shape).to(opmath)
    return (coef(alpha) * x.to(opmath) + coef(sigma) * noise).to(x.dtype).contiguous()
