"""The offline reference separation: what "the model's offline output" is.

:func:`separate_signal` turns a whole signal into stems. The streaming engine
(``server/engine``) must reproduce it block by block, shifted by a fixed
latency, so every choice made here is a plan the engine can follow too:

* **Spectrogram models** run on windows of exactly ``window_frames`` STFT
  frames. The signal is treated as preceded and followed by silence: it is
  left-padded with ``n_fft - hop`` zeros (so frame 0 already covers sample 0
  and every sample is covered by all the frames a steady-state sample is) and
  right-padded to whole frames. Windows start every ``hop`` frames of a
  :class:`WindowPlan`; each frame's magnitude estimate is the weighted mean of
  the estimates of the windows covering it (see :class:`WindowPlan` for the
  weights), the mixture phase is applied, and the STFT is inverted by weighted
  overlap-add (:func:`models.stft.istft`). Exactly ``T`` samples come back,
  aligned with the input. When every source is estimated and the model asks
  for it, the overlap-added magnitudes first share the mixture out jointly
  (:class:`models.joint.JointStems`: by power frame by frame, or with the
  causal multichannel Wiener filter), as the engine does too.
* **Causal waveform models** (``causal=True``): ``model.separate`` on the whole
  signal followed by ``lookahead`` samples of silence, cropped to ``T``. The
  padding makes the last outputs see silence after the signal, as a flushed
  stream's do; left to itself a model treats its input's end its own way (the
  causal Demucs's transposed convolutions, for one, take the frames past the
  end as zero activations, not as frames computed from silence), which would
  differ from any stream in the last ``lookahead`` samples. The engine streams
  them with a :class:`CausalPlan`.
* **Non-causal waveform models**: the same weighted overlap as spectrogram
  windows, in samples: chunks of ``segment`` samples every ``hop`` samples,
  cross-faded.

A :class:`WindowPlan` is derived from the model's description by
:func:`window_plan` (defaults chosen to fit a latency budget) and says how
late, in samples, the last window that touches a sample completes: that is
the model part of a streaming session's latency.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from stemserve.models.base import Separator
from stemserve.models.description import ModelDescription
from stemserve.models.joint import JointStems, joint_stems
from stemserve.models.stft import istft, magnitude_phase, stft

Weighting = Literal["taper", "hard"]
Progress = Callable[[int, int], None]

# Default budget for the *model* part of a streaming latency (window, lookahead
# and STFT framing). The product limit is 250 ms in total; the rest is left for
# resampling and the bridge's network slack.
DEFAULT_MAX_LATENCY_S = 0.2
# A causal waveform model is run every this many samples at least (rounded up to
# its stride): fewer, longer forward passes at the cost of latency.
DEFAULT_CAUSAL_HOP = 512
# Step of a causal model with per-layer caches (``stream_delay``): a step costs only its new
# samples, so it can be short. A step's fixed cost (one launch per layer) is what limits it:
# 4 ms on a GPU; on a CPU the bundled Conv-TasNet spends about 3.5 ms per step whatever its
# length, so the engine steps every 16 ms there (see EngineConfig.causal_hop to change it).
DEFAULT_CACHED_STEP_S = 0.004
DEFAULT_CACHED_STEP_CPU_S = 0.016
# Context assumed for a causal model whose receptive field is unbounded (seconds).
DEFAULT_UNBOUNDED_CONTEXT_S = 4.0
# Chunk length for a non-causal waveform model that states no preferred segment.
DEFAULT_SEGMENT_S = 0.5


@dataclass(frozen=True)
class WindowPlan:
    """How fixed-size model inputs tile a stream, with weighted overlap.

    Units are STFT frames for spectrogram models (``n_fft`` and ``hop_length``
    set) and samples for waveform chunks (both None).

    Window ``j`` covers units ``[start(j), start(j) + size)``. Its estimate gets
    weight zero on its last ``lookahead`` units (right context the model sees
    but whose own estimate is not used, because it lacks right context itself)
    and on its first ``first`` units; in between, on ``support`` units, the
    weight is 1 (``"hard"``: consecutive windows' supports tile the stream) or
    a sin² fade in and out over ``support = 2 * hop`` units (``"taper"``:
    neighbouring windows cross-fade; the weights of overlapping windows sum
    to one). Each unit's estimate is the weighted sum over the windows that
    cover it divided by the sum of their weights. Window 0 is the first whose
    support reaches unit 0; units before 0 are silence.

    Attributes:
        size: units per window (``window_frames`` or the chunk length in samples).
        hop: units between consecutive windows.
        lookahead: trailing units of each window with zero weight.
        weighting: ``"taper"`` or ``"hard"``.
        n_fft: STFT size (spectrogram plans only).
        hop_length: STFT hop (spectrogram plans only).
    """

    size: int
    hop: int
    lookahead: int
    weighting: Weighting = "taper"
    n_fft: int | None = None
    hop_length: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or self.hop < 1 or self.lookahead < 0:
            raise ValueError(f"need size >= 1, hop >= 1, lookahead >= 0; got {self}")
        if self.size - self.lookahead < self.hop:
            raise ValueError(
                f"size {self.size} - lookahead {self.lookahead} must be >= hop {self.hop} "
                "so that every unit gets a non-zero weight"
            )
        if self.weighting not in ("taper", "hard"):
            raise ValueError(f"unknown weighting {self.weighting!r}")
        if (self.n_fft is None) != (self.hop_length is None):
            raise ValueError("set both n_fft and hop_length (spectrogram plan) or neither (waveform chunks)")

    @property
    def spectrogram(self) -> bool:
        return self.n_fft is not None

    @property
    def support(self) -> int:
        """Units of each window with non-zero weight."""
        if self.weighting == "hard":
            return self.hop
        return min(2 * self.hop, self.size - self.lookahead)

    @property
    def first(self) -> int:
        """Index within a window of its first unit with non-zero weight."""
        return self.size - self.lookahead - self.support

    @property
    def delay(self) -> int:
        """Units past unit ``k`` that must exist before unit ``k``'s estimate is final.

        The last window with weight on ``k`` starts at worst ``k - first`` and
        ends ``size - 1`` units later.
        """
        return self.size - 1 - self.first

    @property
    def latency(self) -> int:
        """Algorithmic latency in samples at the model's rate.

        Waveform chunks: ``delay``. Spectrogram: frame ``k`` covers samples
        ``[k * hop_length - (n_fft - hop_length), (k + 1) * hop_length)`` of the
        stream, so a sample waits for the rest of its latest frame
        (``n_fft - 1`` at worst) and then ``delay`` more frames.
        """
        if self.n_fft is None or self.hop_length is None:
            return self.delay
        return self.n_fft - 1 + self.delay * self.hop_length

    def weights(self, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
        """``(size,)`` weight of each unit of a window."""
        w = torch.zeros(self.size, dtype=torch.float64)
        m = self.support
        if self.weighting == "hard":
            w[self.first : self.first + m] = 1.0
        else:
            # sin^2 over m units: with m == 2 * hop, w[i] + w[i + hop] == 1.
            phase = (torch.arange(m, dtype=torch.float64) + 0.5) * math.pi / m
            w[self.first : self.first + m] = torch.sin(phase) ** 2
        return w.to(dtype=dtype, device=device)

    def start(self, j: int) -> int:
        """First unit covered by window ``j`` (negative for the first windows)."""
        return (j + 1) * self.hop - (self.size - self.lookahead)

    def final_after(self, j: int) -> int:
        """Units ``< final_after(j)`` are final once windows ``0..j`` are in."""
        return self.start(j + 1) + self.first

    def windows_for(self, units: int) -> int:
        """Windows needed so that units ``[0, units)`` are final."""
        if units <= 0:
            return 0
        # smallest J with final_after(J - 1) >= units
        return max(0, -(-(units - self.start(0) - self.first) // self.hop))

    def describe(self) -> dict[str, int | str | None]:
        """Plain dict of the plan and its derived numbers (for logs and ModelInfo)."""
        return {
            "size": self.size,
            "hop": self.hop,
            "lookahead": self.lookahead,
            "weighting": self.weighting,
            "support": self.support,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "latency": self.latency,
        }


@dataclass(frozen=True)
class CausalPlan:
    """Streaming a causal waveform model in equal steps.

    With per-layer caches (``cached``, models whose description states
    ``stream_delay``): every ``hop`` samples the model steps over just those
    samples, carrying its caches, and returns the ``hop`` estimates ending
    ``lookahead`` (= the stream delay) samples before the newest input; nothing
    is recomputed and the output equals the offline one exactly.

    Otherwise, with recomputed left context: every ``hop`` samples (a multiple of the model's stride) the model runs on
    the last ``context + hop`` samples; of its output, the ``hop`` samples that
    end ``lookahead`` samples before the newest input are final (they have all
    their future) and have ``context - lookahead >= receptive_field`` samples of
    left context, so they equal the offline output. Near the stream start the
    input starts at sample 0 instead (as offline) and is right-padded with
    zeros, which a causal model's earlier outputs cannot see.

    Attributes:
        hop: samples per step (multiple of ``stride``).
        context: samples of left context before each step (multiple of ``stride``).
        lookahead: the model's lookahead in samples.
        stride: the model's stride.
        exact: False when the model's receptive field is unbounded and ``context``
            is a cap: the output then only approximates the offline one.
        cached: steps carry per-layer caches (``context`` is 0, ``lookahead`` the
            model's ``stream_delay``).
    """

    hop: int
    context: int
    lookahead: int
    stride: int = 1
    exact: bool = True
    cached: bool = False

    def __post_init__(self) -> None:
        if self.stride < 1 or self.hop < 1 or self.hop % self.stride:
            raise ValueError(f"hop {self.hop} must be a positive multiple of stride {self.stride}")
        if self.context < 0 or self.context % self.stride:
            raise ValueError(f"context {self.context} must be a non-negative multiple of stride {self.stride}")
        if self.cached and self.context:
            raise ValueError("a cached plan recomputes no context (context must be 0)")

    @property
    def input_length(self) -> int:
        """Samples per model input: ``context + hop``."""
        return self.context + self.hop

    @property
    def latency(self) -> int:
        """Samples: a sample waits for its lookahead, then for the rest of its step."""
        return self.lookahead + self.hop - 1

    def describe(self) -> dict[str, int | bool]:
        return {
            "hop": self.hop,
            "context": self.context,
            "lookahead": self.lookahead,
            "stride": self.stride,
            "exact": self.exact,
            "cached": self.cached,
            "latency": self.latency,
        }


Plan = WindowPlan | CausalPlan


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def window_plan(
    description: ModelDescription,
    *,
    window_hop: int | None = None,
    lookahead: int | None = None,
    weighting: Weighting | None = None,
    segment: int | None = None,
    max_latency_s: float | None = DEFAULT_MAX_LATENCY_S,
) -> WindowPlan:
    """The window plan for a spectrogram or non-causal waveform model.

    Defaults (units: frames for spectrogram models, samples for waveform chunks;
    ``W`` the window size):

    * spectrogram, non-causal: ``hop = W // 4``, ``lookahead = W // 4``, taper
      over ``2 * hop``: the used estimates are the centre half of each window.
    * spectrogram, causal: ``hop = W // 4``, ``lookahead = 0``, hard: each frame
      comes from the window where it is among the last ``hop`` (most left context).
    * waveform: ``size = description.segment`` (or ``DEFAULT_SEGMENT_S``),
      ``hop = size // 4``, ``lookahead`` = the model's stated lookahead clamped to
      ``[size // 8, size // 2]``, taper.

    Spectrogram models only: when the defaults' latency exceeds ``max_latency_s``
    (None: no limit), hop and lookahead shrink to fit: the delay budget is split
    between the cross-fade (``2 * hop``) and the lookahead. Arguments given
    explicitly are kept; a plan that cannot meet the budget with them raises
    ValueError. Waveform chunk plans keep the model's segment and report the
    latency it implies (about three quarters of a segment).
    """
    d = description
    if d.domain == "spectrogram":
        assert d.window_frames is not None and d.n_fft is not None and d.hop_length is not None
        size = d.window_frames
        unit = d.hop_length
        fixed = d.n_fft - 1  # samples of latency that do not depend on the plan
        default_la = 0 if d.causal else size // 4
        default_weighting: Weighting = "hard" if d.causal else "taper"
        n_fft: int | None = d.n_fft
        hop_length: int | None = d.hop_length
    else:
        if d.causal:
            raise ValueError("causal waveform models stream with a CausalPlan (see causal_plan)")
        size = segment or d.segment or _round_up(int(d.sample_rate * DEFAULT_SEGMENT_S), d.stride)
        unit = 1
        fixed = 0
        default_la = min(max(d.lookahead, size // 8), size // 2)
        default_weighting = "taper"
        n_fft = hop_length = None
    hop = window_hop or max(1, size // 4)
    la = default_la if lookahead is None else lookahead
    la = min(la, size - hop)
    chosen_weighting = weighting or default_weighting
    plan = WindowPlan(size, hop, la, chosen_weighting, n_fft, hop_length)
    if max_latency_s is None or d.domain != "spectrogram":
        # A waveform model's chunk length is what it was trained on; shrinking the
        # hop instead would multiply the work, so its latency is reported as is.
        return plan
    budget = int(max_latency_s * d.sample_rate)
    if plan.latency <= budget:
        return plan
    # Frames (or samples) of delay the budget allows: delay = lookahead + support - 1.
    allowed = (budget - fixed) // unit
    if allowed < 0:
        raise ValueError(f"a latency budget of {max_latency_s * 1000:.0f} ms is below the STFT's own {fixed} samples")
    if window_hop is None:
        # taper: support = 2 * hop, so give the cross-fade and the lookahead half each.
        per = 4 if chosen_weighting == "taper" else 2
        hop = max(1, min(hop, (allowed + 1) // per))
    support = hop if chosen_weighting == "hard" else 2 * hop
    if lookahead is None:
        la = max(0, min(default_la, allowed + 1 - support))
    plan = WindowPlan(size, hop, min(la, size - hop), chosen_weighting, n_fft, hop_length)
    if plan.latency > budget:
        raise ValueError(
            f"window plan {plan.describe()} has latency {plan.latency} samples, over the budget of {budget} "
            f"({max_latency_s * 1000:.0f} ms at {d.sample_rate} Hz)"
        )
    return plan


def causal_plan(
    description: ModelDescription,
    *,
    hop: int | None = None,
    unbounded_context_s: float = DEFAULT_UNBOUNDED_CONTEXT_S,
    cached: bool | None = None,
    cached_step_s: float = DEFAULT_CACHED_STEP_S,
) -> CausalPlan:
    """The plan for a causal waveform model.

    With per-layer caches (the default when the model has them, ``cached=None``):
    ``hop`` defaults to ``cached_step_s`` rounded up to the stride, no context.
    Otherwise (or ``cached=False``): ``hop`` defaults to ``DEFAULT_CAUSAL_HOP`` rounded
    up to the stride; context covers the receptive field plus the lookahead."""
    d = description
    if d.domain != "waveform" or not d.causal:
        raise ValueError("causal_plan is for causal waveform models")
    if cached and (d.stream_delay is None or d.conditioned):
        raise ValueError(f"{d.architecture} has no per-layer caches to stream with")
    if (cached is None and d.stream_delay is not None and not d.conditioned) or cached:
        assert d.stream_delay is not None
        step = _round_up(hop or max(1, round(cached_step_s * d.sample_rate)), d.stride)
        return CausalPlan(hop=step, context=0, lookahead=d.stream_delay, stride=d.stride, cached=True)
    step = _round_up(hop or DEFAULT_CAUSAL_HOP, d.stride)
    if d.receptive_field is None:
        context = _round_up(int(unbounded_context_s * d.sample_rate), d.stride)
        exact = False
    else:
        context = _round_up(d.receptive_field + d.lookahead, d.stride)
        exact = True
    return CausalPlan(hop=step, context=context, lookahead=d.lookahead, stride=d.stride, exact=exact)


def plan_for(
    description: ModelDescription,
    *,
    window_hop: int | None = None,
    lookahead: int | None = None,
    weighting: Weighting | None = None,
    segment: int | None = None,
    causal_hop: int | None = None,
    max_latency_s: float | None = DEFAULT_MAX_LATENCY_S,
    unbounded_context_s: float = DEFAULT_UNBOUNDED_CONTEXT_S,
    causal_cached: bool | None = None,
    cached_step_s: float = DEFAULT_CACHED_STEP_S,
) -> Plan:
    """The plan :func:`separate_signal` and the streaming engine follow for this model."""
    if description.domain == "waveform" and description.causal:
        return causal_plan(
            description,
            hop=causal_hop,
            unbounded_context_s=unbounded_context_s,
            cached=causal_cached,
            cached_step_s=cached_step_s,
        )
    return window_plan(
        description,
        window_hop=window_hop,
        lookahead=lookahead,
        weighting=weighting,
        segment=segment,
        max_latency_s=max_latency_s,
    )


def file_plan(
    description: ModelDescription,
    *,
    window_hop: int | None = None,
    weighting: Weighting | None = None,
    segment: int | None = None,
    causal_hop: int | None = None,
    unbounded_context_s: float = DEFAULT_UNBOUNDED_CONTEXT_S,
    causal_cached: bool | None = None,
    cached_step_s: float = DEFAULT_CACHED_STEP_S,
) -> Plan:
    """The throughput plan for file jobs, whose latency nobody hears.

    Spectrogram models: windows of ``W = window_frames`` frames every ``W // 2``
    frames. Non-causal: lookahead ``W // 4`` and weight 1 on the centre half
    (``"hard"``), so each frame's estimate has a quarter window of context on
    each side and every frame is computed twice (the live plan, held under its
    latency budget, computes each about nine times). Causal: lookahead 0, each
    frame from the window where it is among the last half. ``weighting="taper"``
    cross-fades over ``2 * hop`` instead. Waveform models keep their own plan
    (:func:`plan_for` without a latency budget): a chunk's length is what the
    model was trained on, and a causal model's file stream steps as its
    streamer decides (:meth:`server.engine.causal.CausalStreamer.offline_hop`).
    """
    d = description
    if d.domain != "spectrogram":
        return plan_for(
            d,
            window_hop=window_hop,
            weighting=weighting,
            segment=segment,
            causal_hop=causal_hop,
            max_latency_s=None,
            unbounded_context_s=unbounded_context_s,
            causal_cached=causal_cached,
            cached_step_s=cached_step_s,
        )
    assert d.window_frames is not None and d.n_fft is not None and d.hop_length is not None
    size = d.window_frames
    hop = window_hop or max(1, size // 2)
    chosen: Weighting = weighting or "hard"
    if d.causal:
        lookahead = 0
    elif chosen == "hard":
        lookahead = max(0, (size - hop) // 2)  # the used hop sits in the middle of the window
    else:
        lookahead = max(0, (size - 2 * hop) // 2)  # the cross-fade (2 * hop) sits in the middle
    return WindowPlan(size, hop, min(lookahead, size - hop), chosen, d.n_fft, d.hop_length)


class OverlapAdd:
    """Weighted overlap-add of window estimates, one window at a time, in order.

    Used by the offline path below and by the streaming engine, so both combine
    estimates with the very same operations. Estimates have shape
    ``(stems, *rest, size)`` (the last axis is the plan's unit); stems can be
    added together (:meth:`add`) or one at a time (:meth:`add_stem`), in any
    order within a window. :meth:`complete` then returns the ``hop`` units that
    no later window touches, starting at ``plan.start(j) + plan.first`` for the
    ``j``-th completed window.
    """

    def __init__(
        self,
        plan: WindowPlan,
        stems: int,
        rest: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> None:
        self.plan = plan
        m = plan.support
        self._lo = plan.first
        self._w = plan.weights(dtype, device)[self._lo : self._lo + m]
        self._num = torch.zeros(stems, *rest, m, dtype=dtype, device=device)
        self._den = torch.zeros(stems, m, dtype=dtype, device=device)
        self._rest_dims = len(rest)

    def add(self, estimate: torch.Tensor) -> None:
        """Add the current window's ``(stems, *rest, size)`` estimate."""
        for s in range(estimate.shape[0]):
            self.add_stem(s, estimate[s])

    def add_stem(self, stem: int, estimate: torch.Tensor) -> None:
        """Add stem ``stem`` of the current window: ``(*rest, size)``."""
        m = self._w.shape[0]
        self._num[stem] += estimate[..., self._lo : self._lo + m] * self._w
        self._den[stem] += self._w

    def complete(self) -> torch.Tensor:
        """Close the current window: ``(stems, *rest, hop)`` final estimates."""
        h = self.plan.hop
        den = self._den[:, :h].reshape(self._den.shape[0], *([1] * self._rest_dims), h)
        out = self._num[..., :h] / den
        self._num = torch.cat([self._num[..., h:], torch.zeros_like(self._num[..., :h])], dim=-1)
        self._den = torch.cat([self._den[:, h:], torch.zeros_like(self._den[:, :h])], dim=-1)
        return out


def unordered_sources(description: ModelDescription) -> bool:
    """True when the model's outputs have no fixed order (speaker separation, PIT-trained)."""
    if description.conditioned:
        return False
    flag = description.extras.get("unordered_sources")
    if flag is not None:
        return bool(flag)
    return all(name.startswith("speaker") for name in description.sources)


class PermutationTracker:
    """Keeps the output order of an unordered-source model stable from window to window.

    A speaker-separation model names its outputs arbitrarily in each window, so
    cross-fading window ``j`` into window ``j - 1`` as they come would blend
    speakers. Before window ``j`` is used, its sources are reordered to best match
    (least squared difference) window ``j - 1`` on the units both cover, the
    ``size - hop`` units where they overlap. Window 0 is taken as it is. Offline
    separation and the streaming engine both run this on the full ``(sources,
    *rest, size)`` estimate of each window in order, so they agree.
    """

    def __init__(self, plan: WindowPlan, sources: int) -> None:
        self.overlap = plan.size - plan.hop
        self.orders = [list(p) for p in itertools.permutations(range(sources))]
        self._previous: torch.Tensor | None = None

    def reset(self) -> None:
        self._previous = None

    def align(self, estimate: torch.Tensor) -> torch.Tensor:
        """``(sources, *rest, size)`` -> the same with sources reordered."""
        if self.overlap > 0 and self._previous is not None and len(self.orders) > 1:
            before = self._previous[..., -self.overlap :]
            now = estimate[..., : self.overlap]
            costs = [float((now[order] - before).pow(2).sum()) for order in self.orders]
            best = self.orders[min(range(len(costs)), key=costs.__getitem__)]
            if best != self.orders[0]:
                estimate = estimate[best]
        self._previous = estimate
        return estimate


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _targets(description: ModelDescription, target: int | None) -> list[int] | None:
    """Target indices to run a conditioned model for (None: not conditioned)."""
    if target is not None and not 0 <= target < len(description.sources):
        raise ValueError(f"target {target} out of range for sources {description.sources}")
    if not description.conditioned:
        return None
    return [target] if target is not None else list(range(len(description.sources)))


def _run(model: Separator, batch: torch.Tensor, targets: list[int] | None) -> torch.Tensor:
    """``(B, ...)`` inputs -> ``(B, S, ...)`` estimates (conditioned: one pass per target)."""
    if targets is None:
        return model.separate(batch)
    outs = [
        model.separate(batch, torch.full((batch.shape[0],), t, dtype=torch.long, device=batch.device)) for t in targets
    ]
    return torch.cat(outs, dim=1)


def overlap_windows(
    plan: WindowPlan,
    x: torch.Tensor,
    run: Callable[[torch.Tensor], torch.Tensor],
    stems: int,
    batch_size: int = 16,
    progress: Progress | None = None,
    unordered: bool = False,
) -> torch.Tensor:
    """Run ``run`` on the plan's windows over ``x`` and overlap-add the estimates.

    Args:
        x: ``(*rest, units)``; units outside ``[0, units)`` are zeros (silence).
        run: ``(B, *rest, size)`` -> ``(B, stems, *rest, size)``.
        unordered: keep the sources' order consistent across windows (:class:`PermutationTracker`).
    Returns:
        ``(stems, *rest, units)`` estimates.
    """
    units = x.shape[-1]
    count = plan.windows_for(units)
    left = max(0, -plan.start(0))
    right = max(0, plan.start(count - 1) + plan.size - units) if count else 0
    padded = F.pad(x, (left, right))
    acc = OverlapAdd(plan, stems, tuple(x.shape[:-1]), dtype=x.dtype, device=x.device)
    tracker = PermutationTracker(plan, stems) if unordered else None
    pieces = []
    for first in range(0, count, batch_size):
        idx = range(first, min(count, first + batch_size))
        batch = torch.stack([padded[..., plan.start(j) + left : plan.start(j) + left + plan.size] for j in idx])
        est = run(batch).to(x.dtype)
        for b in range(est.shape[0]):
            acc.add(est[b] if tracker is None else tracker.align(est[b]))
            pieces.append(acc.complete())
        if progress is not None:
            progress(min(count, first + batch_size), count)
    out = torch.cat(pieces, dim=-1) if pieces else x.new_zeros(stems, *x.shape[:-1], 0)
    offset = -(plan.start(0) + plan.first)  # index of unit 0 in ``out``
    return out[..., offset : offset + units]


@torch.inference_mode()
def separate_signal(
    model: Separator,
    wav: torch.Tensor,
    target: int | None = None,
    progress: Progress | None = None,
    *,
    plan: Plan | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Separate a whole signal: the reference the streaming engine reproduces.

    Args:
        model: any :class:`Separator` (its parameters' device is used).
        wav: ``(C, T)`` at the model's sample rate and channel count.
        target: a source index. A conditioned model then runs for that source
            only; for other models the other stems are dropped. None: all stems.
        progress: called as ``progress(done, total)`` (windows or chunks).
        plan: how to tile the signal; default :func:`plan_for` the description.
            Ignored for causal waveform models (one pass over the signal and
            ``lookahead`` samples of silence).
        batch_size: windows per forward pass.
    Returns:
        ``(S, C, T)`` on ``wav``'s device (``S = 1`` when ``target`` is given).
    """
    d = model.describe()
    if wav.dim() != 2 or wav.shape[0] != d.audio_channels:
        raise ValueError(f"expected wav of shape ({d.audio_channels}, samples), got {tuple(wav.shape)}")
    targets = _targets(d, target)
    stems = len(targets) if targets is not None else len(d.sources)
    device = model_device(model)
    x = wav.to(device=device, dtype=torch.float32)
    length = x.shape[-1]
    if d.domain == "waveform" and d.causal:
        # silence after the signal, as a flushed stream sees (module docstring)
        out = _run(model, F.pad(x, (0, d.lookahead))[None], targets)[0]
        if progress is not None:
            progress(1, 1)
    else:
        chosen = plan or plan_for(d)
        if not isinstance(chosen, WindowPlan):
            raise ValueError(f"{d.architecture} needs a WindowPlan, got {type(chosen).__name__}")
        if d.domain == "spectrogram":
            joint = JointStems(d) if joint_stems(d, None if target is None else [target]) else None
            out = _separate_spectrogram(model, x, chosen, targets, stems, batch_size, progress, joint)
        else:
            out = overlap_windows(
                chosen, x, lambda b: _run(model, b, targets), stems, batch_size, progress, unordered_sources(d)
            )
    if target is not None and targets is None:
        out = out[target : target + 1]
    return out[..., :length].to(wav.device)


def _separate_spectrogram(
    model: Separator,
    x: torch.Tensor,
    plan: WindowPlan,
    targets: list[int] | None,
    stems: int,
    batch_size: int,
    progress: Progress | None,
    joint: JointStems | None,
) -> torch.Tensor:
    assert plan.n_fft is not None and plan.hop_length is not None
    n_fft, hop = plan.n_fft, plan.hop_length
    length = x.shape[-1]
    pad_left = n_fft - hop  # silence before the stream: frame 0 covers [-(n_fft - hop), hop)
    frames = -(-(length + pad_left) // hop)  # enough frames to cover every sample
    padded_length = (frames - 1) * hop + n_fft
    spec = stft(F.pad(x, (pad_left, padded_length - pad_left - length)), n_fft, hop)  # (C, F, K)
    mag, phase = magnitude_phase(spec)
    unordered = unordered_sources(model.describe())
    est = overlap_windows(plan, mag, lambda b: _run(model, b, targets), stems, batch_size, progress, unordered)
    # every source was asked for: share the mixture out among them
    out = istft(est * phase if joint is None else joint(est, mag, phase), n_fft, hop)  # (S, C, padded_length)
    return out[..., pad_left : pad_left + length]
