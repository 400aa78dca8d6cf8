"""Causal multichannel Wiener filter: the stems' places in the stereo field as a post-filter.

Sharing the mixture out by power (:mod:`models.joint`, ``p = 2``) is a
single-channel Wiener filter: each channel of each time-frequency bin is split
in proportion to the stems' estimated powers, whatever the stems' places in
the stereo field. A mixed song places every instrument somewhere (a pan, a
stereo width, inter-channel delays), and that place is part of what tells the
stems apart. The multichannel Wiener filter (Duong, Vincent & Gribonval 2010)
models stem ``j`` in bin ``(f, t)`` as a zero-mean complex Gaussian with
covariance ``v_j(f, t) R_j(f, t)``: a power ``v_j`` (what the network estimates)
times a ``C x C`` spatial covariance ``R_j`` (the place). The minimum-mean-square
estimate of the stem's STFT is then

    Y_j = v_j R_j (sum_k v_k R_k)^-1 X,

and the stems sum to the mixture ``X``. This is one EM step of Nugraha,
Liutkus & Vincent (2016), the post-filter Open-Unmix runs over a whole track.
Here ``R_j`` is estimated causally, so that a stream and an offline pass give
the same output: from the initial estimates ``y_j`` (the network's magnitudes
with the mixture's phase),

    R_j(f, t) = EMA_t[y_j y_j^H] / EMA_t[v_j],   v_j = mean over channels of |y_j|^2,

exponential moving averages over frames ``<= t`` with a time constant of
``time_constant`` frames. (Blending the first frames' ``R_j`` towards the
identity, an uninformed place, made no measurable difference on the bundled
U-Net's validation songs, so the averages start from nothing.)

For one channel ``R_j = 1`` and the filter is exactly power sharing.
"""

from __future__ import annotations

import math

import torch

# Diagonal loading of the mixture covariance, relative to its trace: stems that
# all sit in the same place make it singular (rank one for centred mono stems).
LOADING = 1e-6
EPS = 1e-30
CHUNK = 256  # frames per step of the covariance recursion (bounds memory on long files)


class SpatialWiener:
    """Stateful causal multichannel Wiener filter over a stream of stereo STFT frames.

    Feed consecutive frames in blocks of any size; the output does not depend on
    how the frames are split into calls (up to float64 rounding).

    Args:
        stems: number of stems ``S`` (all of the mixture's stems).
        bins: frequency bins ``F``.
        time_constant: frames over which the spatial covariances are averaged
            (the exponential moving average's ``1 / alpha``).
    """

    channels = 2  # the closed-form 2 x 2 algebra below; one channel is power sharing

    def __init__(self, stems: int, bins: int, time_constant: float) -> None:
        if not 1 <= time_constant <= 1e9:
            raise ValueError(f"time_constant must be between 1 and 1e9 frames, got {time_constant}")
        self.stems, self.bins = stems, bins
        self.time_constant = float(time_constant)
        self.reset()

    def reset(self) -> None:
        """Forget every frame seen (a new stream)."""
        # Moving averages of |y_0|^2, |y_1|^2, Re and Im of y_0 conj(y_1), per stem and bin.
        self._moments = torch.zeros(4, self.stems, self.bins, dtype=torch.float64)

    def __call__(self, estimates: torch.Tensor, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """Filter the next frames.

        Args:
            estimates: ``(S, 2, F, T)`` non-negative magnitude estimates of the stems.
            magnitude, phase: the ``(2, F, T)`` mixture STFT's magnitude and unit-modulus
                phase of the same frames (:func:`models.stft.magnitude_phase`).
        Returns:
            ``(S, 2, F, T)`` complex stem STFTs (``phase.dtype``, on its device) that sum
            to the mixture wherever any estimate is non-zero (and are zero where all are,
            as with power sharing).
        """
        s, f = self.stems, self.bins
        frames = estimates.shape[-1]
        if estimates.shape[:3] != (s, 2, f) or magnitude.shape != (2, f, frames) or phase.shape != magnitude.shape:
            raise ValueError(
                f"expected estimates ({s}, 2, {f}, T) and mixture magnitude and phase (2, {f}, T); got "
                f"{tuple(estimates.shape)}, {tuple(magnitude.shape)} and {tuple(phase.shape)}"
            )
        if not phase.is_complex():
            raise ValueError("phase must be complex (unit modulus)")
        out = [
            self._chunk(estimates[..., i : i + CHUNK], magnitude[..., i : i + CHUNK], phase[..., i : i + CHUNK])
            for i in range(0, frames, CHUNK)
        ]
        if not out:
            return torch.zeros(estimates.shape, dtype=phase.dtype, device=phase.device)
        return torch.cat(out, dim=-1)

    def _chunk(self, estimates: torch.Tensor, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        device, dtype = phase.device, phase.dtype
        unit = phase.to("cpu", torch.complex128)  # (2, F, T)
        x = magnitude.to("cpu", torch.float64) * unit
        e = estimates.to("cpu", torch.float64)  # (S, 2, F, T)
        # y_j = e_j * (mixture phase): |y_jc|^2 = e_jc^2, and y_j0 conj(y_j1) = e_j0 e_j1 times the
        # mixture's inter-channel phase (1 where a channel is silent, as magnitude_phase makes it)
        inter = unit[0] * unit[1].conj()  # (F, T)
        product = e[:, 0] * e[:, 1]
        moments = torch.stack([e[:, 0].square(), e[:, 1].square(), product * inter.real, product * inter.imag])
        v = (moments[0] + moments[1]) / 2  # (S, F, T) power
        r00, r11, r01 = self._covariances(moments)  # R_j: (S, F, T); r01 complex
        c00 = (v * r00).sum(0)  # mixture covariance sum_j v_j R_j: (F, T)
        c11 = (v * r11).sum(0)
        c01 = (v * r01).sum(0)
        loading = LOADING * (c00 + c11) + EPS
        c00, c11 = c00 + loading, c11 + loading
        det = c00 * c11 - c01.abs().square()
        z0 = (c11 * x[0] - c01 * x[1]) / det  # z = C^-1 x
        z1 = (c00 * x[1] - c01.conj() * x[0]) / det
        stems = torch.stack([r00 * z0 + r01 * z1, r01.conj() * z0 + r11 * z1], dim=1) * v[:, None]
        # The loading leaves x - sum_j y_j = loading * z (up to 1e-3 of the mixture where the
        # covariances are nearly singular): share that residual out by power too.
        total = v.sum(0)  # (F, T)
        share = torch.where(total > 0, v / total.clamp_min(EPS), torch.zeros_like(v))
        stems = stems + share[:, None] * (x - stems.sum(0))
        return stems.to(device, dtype)

    def _covariances(self, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each stem's spatial covariance per frame, ``(r00, r11, r01)`` each ``(S, F, T)``.

        The moving averages in closed form: with ``k = 1 - alpha``, frame ``t`` of the
        chunk has ``m_t = k^(t+1) (m_prev + sum_{i<=t} alpha k^-(i+1) o_i)``, one
        cumulative sum per run of frames short enough that ``k^-n`` stays below
        ``1e12`` (float64 keeps the rounding far below the streaming tolerance).
        """
        frames = moments.shape[-1]
        keep = 1.0 - 1.0 / self.time_constant
        if keep == 0.0:  # a one-frame average: no memory
            averages = moments.clone()
        else:
            run = max(1, int(12 * math.log(10) / -math.log(keep)))
            averages = torch.empty_like(moments)
            for a in range(0, frames, run):
                b = min(frames, a + run)
                decay = keep ** torch.arange(1, b - a + 1, dtype=torch.float64)
                grow = (1.0 - keep) / decay
                averages[..., a:b] = decay * (self._moments[..., None] + torch.cumsum(grow * moments[..., a:b], -1))
        self._moments = averages[..., -1].clone()
        power = ((averages[0] + averages[1]) / 2).clamp_min(EPS)
        r00, r11 = averages[0] / power, averages[1] / power
        r01 = torch.complex(averages[2], averages[3]) / power
        return r00, r11, r01
