"""Training augmentation as event mixing (in the manner of Scaper).

A training example is built from one *event* per stem: which track the stem
comes from, where in that track it starts (the crop), its gain, whether its
channels are swapped, and whether it is dropped (silenced). The mixture is then
the sum of the stems, so ``mixture == stems.sum(0)`` always holds after
augmentation, whatever was changed.

* :func:`sample_events` draws the events for one example; with probability
  ``remix_probability`` each stem comes from its own random track and offset
  (remixing across songs, as Open-Unmix and Demucs train), otherwise all stems
  share the example's track and offset. With probability
  ``repitch_probability`` a stem is also *repitched*: played faster or slower by
  up to ``repitch_semitones`` (pitch and tempo together, as a tape does), so one
  song's melody and timbre yield many; stems of one song share the factor.
* :func:`render_events` reads the stems of those events and applies them.
* :func:`augment_stems` applies gains / channel swaps / drops to stems already in
  memory, and :func:`remix_batch` shuffles each stem across a batch (Demucs'
  ``Remix``), both on numpy arrays or torch tensors.

Everything random comes from a ``torch.Generator`` passed in, so an example is a
pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class AugmentConfig:
    """How much to perturb each training example.

    Attributes:
        gain_db: range of the uniform per-stem gain in dB.
        drop_probability: chance that a stem is silenced (its event dropped).
        keep_one: never drop every stem of an example (a silent mixture teaches nothing).
        remix_probability: chance that an example's stems come from different tracks.
        channel_swap_probability: chance that a stereo stem's channels are swapped.
        repitch_probability: chance that a stem (all stems of an unremixed example
            together) is resampled to another pitch and tempo.
        repitch_semitones: the largest shift, up or down (drawn uniformly in semitones).
    """

    gain_db: tuple[float, float] = (-6.0, 3.0)
    drop_probability: float = 0.1
    keep_one: bool = True
    remix_probability: float = 0.5
    channel_swap_probability: float = 0.5
    repitch_probability: float = 0.0
    repitch_semitones: float = 2.0

    def __post_init__(self) -> None:
        low, high = self.gain_db
        if low > high:
            raise ValueError(f"gain_db range is reversed: {self.gain_db}")
        if not 0.0 <= self.repitch_semitones <= 12.0:
            raise ValueError(f"repitch_semitones must be in [0, 12], got {self.repitch_semitones}")
        for name in ("drop_probability", "remix_probability", "channel_swap_probability", "repitch_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


NO_AUGMENT = AugmentConfig(
    gain_db=(0.0, 0.0), drop_probability=0.0, remix_probability=0.0, channel_swap_probability=0.0
)


@dataclass(frozen=True)
class StemEvent:
    """One stem of an example: source track and stem, crop offset (samples), gain, swap, dropped.

    ``speed`` is the repitch factor: ``segment * speed`` source samples are squeezed
    into ``segment``, raising pitch and tempo by ``speed`` (1.0: untouched).
    """

    stem: int
    track: int
    offset: int
    gain: float
    swap: bool
    dropped: bool
    speed: float = 1.0


def source_length(segment: int, speed: float) -> int:
    """Source samples that a stem played ``speed`` times as fast squeezes into ``segment``."""
    return segment if speed == 1.0 else int(round(segment * speed))


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, high: int) -> int:
    """Uniform integer in ``[0, high)``; 0 when ``high <= 1``."""
    return int(torch.randint(max(high, 1), (), generator=generator))


def sample_events(
    base_track: int,
    track_lengths: Sequence[int],
    num_stems: int,
    segment: int,
    config: AugmentConfig,
    generator: torch.Generator,
    base_offset: int | None = None,
) -> list[StemEvent]:
    """Draw the events of one example.

    Args:
        base_track: the example's track (used by every stem unless remixed).
        track_lengths: samples per track, to draw crop offsets within.
        num_stems: stems per example.
        segment: example length in samples.
        base_offset: the shared crop offset; drawn at random when None.
    """
    if not 0 <= base_track < len(track_lengths):
        raise ValueError(f"base_track {base_track} out of range for {len(track_lengths)} tracks")
    if segment <= 0 or num_stems <= 0:
        raise ValueError("segment and num_stems must be positive")

    def speed() -> float:
        # Nothing is drawn when repitching is off, so such runs keep their random streams.
        if config.repitch_probability == 0.0 or _uniform(generator) >= config.repitch_probability:
            return 1.0
        return 2.0 ** (_uniform(generator, -config.repitch_semitones, config.repitch_semitones) / 12.0)

    def offset_in(track: int, factor: float) -> int:
        return _randint(generator, track_lengths[track] - source_length(segment, factor) + 1)

    shared_speed = speed()
    shared = offset_in(base_track, shared_speed) if base_offset is None else base_offset
    remix = _uniform(generator) < config.remix_probability
    events = []
    for stem in range(num_stems):
        track, offset, factor = base_track, shared, shared_speed
        if remix:
            track = _randint(generator, len(track_lengths))
            factor = speed()
            offset = offset_in(track, factor)
        gain = 10.0 ** (_uniform(generator, *config.gain_db) / 20.0)
        swap = _uniform(generator) < config.channel_swap_probability
        dropped = _uniform(generator) < config.drop_probability
        events.append(StemEvent(stem, track, offset, gain, swap, dropped, factor))
    if config.keep_one and all(e.dropped for e in events):
        keep = _randint(generator, num_stems)
        events[keep] = StemEvent(**{**events[keep].__dict__, "dropped": False})
    return events


def render_events(
    events: Sequence[StemEvent],
    read: Callable[[int, int, int, int], torch.Tensor],
    segment: int,
) -> torch.Tensor:
    """Build the stems ``(S, C, segment)`` of ``events``.

    Args:
        read: ``read(track, stem, offset, length) -> (C, length)`` float tensor
            (zero-padded by the caller when the track is shorter).
    """
    stems = []
    for event in events:
        length = source_length(segment, event.speed)
        audio = read(event.track, event.stem, event.offset, length)
        if audio.shape[-1] != length:
            raise ValueError(f"read returned {audio.shape[-1]} samples, expected {length}")
        if length != segment:
            audio = squeeze(audio, segment)
        if event.dropped:
            audio = torch.zeros_like(audio)
        else:
            audio = audio * event.gain
            if event.swap and audio.shape[0] > 1:
                audio = audio.flip(0)
        stems.append(audio)
    return torch.stack(stems)


def squeeze(audio: torch.Tensor, length: int) -> torch.Tensor:
    """Resample ``(C, n)`` audio to ``(C, length)`` (soxr, high quality): pitch and tempo scale by n / length."""
    import soxr

    source = audio.shape[-1]
    out = np.asarray(soxr.resample(audio.numpy().T, source, length, quality="HQ"), dtype=np.float32).T
    return torch.from_numpy(fit_length(out, length))


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """``(C, n)`` audio cut or zero-padded on the right to ``(C, length)`` float32 (resamplers miss by a sample)."""
    if audio.shape[-1] == length:
        return audio
    fitted = np.zeros((audio.shape[0], length), dtype=np.float32)
    fitted[:, : min(length, audio.shape[-1])] = audio[:, :length]
    return fitted


def random_crop(audio: ArrayT, length: int, generator: torch.Generator) -> ArrayT:
    """A random ``length``-sample window of ``audio`` (..., T); zero-padded on the right if shorter."""
    total = audio.shape[-1]
    if total < length:
        pad = [(0, 0)] * (audio.ndim - 1) + [(0, length - total)]
        if isinstance(audio, torch.Tensor):
            return torch.nn.functional.pad(audio, (0, length - total))
        return np.pad(audio, pad)
    start = _randint(generator, total - length + 1)
    return audio[..., start : start + length]


def augment_stems(stems: ArrayT, config: AugmentConfig, generator: torch.Generator) -> ArrayT:
    """Per-stem gain, channel swap, drop (and repitch, if configured) of in-memory stems ``(S, C, T)``; same type back.

    The mixture of the result is ``result.sum(0)`` (recompute it; never reuse the old one).
    """
    if stems.ndim != 3:
        raise ValueError(f"stems must be (S, C, T), got shape {tuple(stems.shape)}")
    events = sample_events(0, [stems.shape[-1]], stems.shape[0], stems.shape[-1], config, generator, base_offset=0)
    tensor = torch.as_tensor(stems)

    def read(_track: int, stem: int, _offset: int, length: int) -> torch.Tensor:
        # A stem repitched down needs more samples than there are: its end is silent.
        return torch.nn.functional.pad(tensor[stem, :, :length], (0, max(0, length - tensor.shape[-1])))

    out = render_events(events, read, stems.shape[-1])
    if isinstance(stems, np.ndarray):
        return out.numpy().astype(stems.dtype, copy=False)
    return out


def remix_batch(stems: ArrayT, generator: torch.Generator) -> ArrayT:
    """Shuffle every stem independently across the batch: ``(B, S, C, T)`` -> same shape.

    Example ``b`` of the result takes stem ``s`` from example ``perm_s[b]``, so each
    new mixture combines stems of different songs. Recompute mixtures as ``sum(1)``.
    """
    if stems.ndim != 4:
        raise ValueError(f"stems must be (B, S, C, T), got shape {tuple(stems.shape)}")
    batch, sources = stems.shape[0], stems.shape[1]
    perms = [torch.randperm(batch, generator=generator) for _ in range(sources)]
    if isinstance(stems, np.ndarray):
        return np.stack([stems[p.numpy(), s] for s, p in enumerate(perms)], axis=1)
    return torch.stack([stems[p.to(stems.device), s] for s, p in enumerate(perms)], dim=1)


def generator_for(*keys: int) -> torch.Generator:
    """A ``torch.Generator`` seeded from integer ``keys`` (seed, epoch, index...), mixed by numpy's SeedSequence."""
    if any(k < 0 for k in keys):
        raise ValueError("generator keys must be >= 0")
    state = np.random.SeedSequence(list(keys)).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 32 | int(state[1])) >> 1)
