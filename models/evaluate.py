"""Evaluation of a checkpoint against oracle bounds: SDR and SI-SDR per stem.

For every track of a split, three estimates of each stem are scored against
the true stem:

* **model**: whole-track separation as a file job computes it (the
  throughput plan of :func:`models.apply.file_plan`, or an official model's
  whole-signal method; ``plan="live"``: the live sessions' plan). Conditioned
  models are run once per target, or for all targets in one call when the
  model normalises its stems jointly (see :mod:`models.joint`);
* **irm** (upper bound): the oracle ideal ratio mask ``|S_j| / sum_k |S_k|``
  from the true stems' STFT magnitudes (the model's ``n_fft`` / ``hop``, or
  4096 / 1024 for waveform models), applied to the mixture STFT and inverted;
* **mixture** (lower bound): the mixture itself as the estimate of every stem.

Metrics (all in dB):

* ``sdr``: BSSEval v4 SDR, i.e. with the time-invariant 512-tap distortion
  filter, computed with ``fast_bss_eval`` on non-overlapping 1 s chunks as
  museval does (window = hop = 1 s); chunks whose reference is silent are
  skipped, each channel is scored as its own signal (museval scores the
  stereo image jointly, so values are close to, not equal to, museval's), the
  track's value is the median over chunks and channels, and values are clamped
  to +-100 dB (a perfect estimate scores 100). ``--chunk-seconds 0`` scores
  whole tracks instead; speech is scored on whole utterances by default.
* ``si_sdr``: scale-invariant SDR (Le Roux et al. 2019, zero-mean) of the
  whole track, channels taken together as one signal.

A multitask model (:class:`models.multitask_unet.MultitaskUNet`) is also scored
on its heads (:func:`head_metrics`): lead raw pitch accuracy (50 cents), voicing
recall / false alarm and activity F1 per stem, over every STFT frame of the
split's tracks pooled, against the labels of their ``notes.json``.

Per stem, the summary is the median over tracks (tracks where the stem is
silent are left out); ``irm_share`` is how much of the oracle's gain over the
mixture the model's median reaches, per stem and on average. Speech models'
outputs are unordered: each mixture's estimates are matched to ``s1`` / ``s2``
by the permutation with the best mean SI-SDR (for the model; the oracle and
mixture need none).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from stemserve.models.base import Separator
from stemserve.models.data import labels, music, speech
from stemserve.models.joint import joint_stems
from stemserve.models.multitask_unet import HeadOutputs, MultitaskUNet, multitask_metrics
from stemserve.models.stft import istft, stft

log = logging.getLogger(__name__)

CLAMP_DB = 100.0
FILTER_LENGTH = 512
WAVEFORM_IRM_FFT = (4096, 1024)  # n_fft, hop of the oracle for waveform models
SILENCE = 1e-10  # mean square below which a reference (chunk) counts as silent (-100 dBFS)
METHODS = ("model", "irm", "mixture")


class EvaluationError(ValueError):
    """Data or model unsuitable for evaluation, with the reason."""


# --------------------------------------------------------------------------- metrics


def sdr(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, chunk_seconds: float = 1.0) -> float:
    """BSSEval v4 SDR of ``estimate`` vs ``reference`` (both ``(C, T)``), median over chunks and channels.

    Returns NaN when the reference is silent in every chunk.
    """
    if reference.shape != estimate.shape or reference.ndim != 2:
        raise ValueError(f"reference {reference.shape} and estimate {estimate.shape} must be equal (C, T)")
    channels, length = reference.shape
    chunk = length if chunk_seconds <= 0 else min(length, int(round(chunk_seconds * sample_rate)))
    count = length // chunk if chunk < length else 1
    if chunk <= FILTER_LENGTH:
        raise ValueError(f"chunks of {chunk} samples are too short for a {FILTER_LENGTH}-tap filter")
    ref = torch.from_numpy(np.ascontiguousarray(reference[:, : count * chunk], dtype=np.float64))
    est = torch.from_numpy(np.ascontiguousarray(estimate[:, : count * chunk], dtype=np.float64))
    ref = ref.reshape(channels * count, 1, chunk)  # (chunks, 1, samples): one source, no permutation
    est = est.reshape(channels * count, 1, chunk)
    audible = ref.pow(2).mean((1, 2)) > SILENCE
    if not bool(audible.any()):
        return math.nan
    ref, est = ref[audible], est[audible]
    with _single_thread():
        return _median_sdr(ref, est)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one thread: MKL's batched LU solve fails ("DLASWP parameter 6") and can
    hang once ``torch.set_num_threads(n > 1)`` has been called (torch 2.13 CPU wheels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _median_sdr(ref: torch.Tensor, est: torch.Tensor) -> float:
    import fast_bss_eval

    try:
        values = -fast_bss_eval.sdr_loss(est, ref, filter_length=FILTER_LENGTH, clamp_db=CLAMP_DB)
    except RuntimeError:  # a near-silent reference chunk made the filter system singular: score chunks one by one
        scores = []
        for r, e in zip(ref, est, strict=True):
            try:
                scores.append(-fast_bss_eval.sdr_loss(e[None], r[None], filter_length=FILTER_LENGTH, clamp_db=CLAMP_DB))
            except RuntimeError:
                continue
        if not scores:
            return math.nan
        values = torch.cat(scores)
    return float(torch.nanmedian(values.flatten()))


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR of ``estimate`` vs ``reference`` (any equal shapes, flattened), zero-mean.

    NaN when the reference is silent; clamped to +-100 dB.
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    est = np.asarray(estimate, dtype=np.float64).reshape(-1)
    if ref.shape != est.shape:
        raise ValueError(f"reference {reference.shape} and estimate {estimate.shape} differ")
    ref = ref - ref.mean()
    est = est - est.mean()
    energy = float(ref @ ref)
    if energy / max(len(ref), 1) <= SILENCE:
        return math.nan
    target = (est @ ref) / energy * ref
    noise = est - target
    ratio = float(target @ target) / max(float(noise @ noise), 1e-300)
    if ratio <= 0:
        return -CLAMP_DB
    return float(np.clip(10 * np.log10(ratio), -CLAMP_DB, CLAMP_DB))


def score(
    references: np.ndarray, estimates: np.ndarray, sample_rate: int, chunk_seconds: float = 1.0
) -> list[dict[str, float]]:
    """``[{"sdr", "si_sdr"}, ...]`` per source for ``(S, C, T)`` references and estimates."""
    if references.shape != estimates.shape or references.ndim != 3:
        raise ValueError(f"references {references.shape} and estimates {estimates.shape} must be equal (S, C, T)")
    return [
        {"sdr": sdr(r, e, sample_rate, chunk_seconds), "si_sdr": si_sdr(r, e)}
        for r, e in zip(references, estimates, strict=True)
    ]


def best_permutation(references: np.ndarray, estimates: np.ndarray) -> list[int]:
    """Order of ``estimates`` (S, ...) that best matches ``references`` by mean SI-SDR."""
    sources = references.shape[0]
    table = np.array([[si_sdr(references[i], estimates[j]) for j in range(sources)] for i in range(sources)])
    table = np.nan_to_num(table, nan=0.0)
    best = max(itertools.permutations(range(sources)), key=lambda p: sum(table[i, p[i]] for i in range(sources)))
    return list(best)


def ideal_ratio_mask(mixture: np.ndarray, references: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """Oracle IRM estimates ``(S, C, T)``: ``|S_j| / sum_k |S_k|`` applied to the mixture STFT.

    The signals are padded by ``n_fft`` on both sides so every sample lies under
    full window overlap, then cropped back; the estimates sum to the mixture.
    """
    length = mixture.shape[-1]
    pad_right = n_fft + (-(length + 2 * n_fft - n_fft)) % hop_length
    mix = torch.nn.functional.pad(torch.from_numpy(np.asarray(mixture, dtype=np.float64)), (n_fft, pad_right))
    refs = torch.nn.functional.pad(torch.from_numpy(np.asarray(references, dtype=np.float64)), (n_fft, pad_right))
    mix_spec = stft(mix, n_fft, hop_length)  # (C, F, T)
    ref_mag = stft(refs, n_fft, hop_length).abs()  # (S, C, F, T)
    total = ref_mag.sum(0, keepdim=True)
    masks = torch.where(total > 0, ref_mag / total.clamp_min(1e-300), torch.full_like(ref_mag, 1 / len(ref_mag)))
    estimates = istft(masks * mix_spec[None], n_fft, hop_length)  # (S, C, samples)
    return estimates[..., n_fft : n_fft + length].numpy().astype(np.float32)


# --------------------------------------------------------------------------- data


@dataclass
class Track:
    name: str
    mixture: np.ndarray  # (C, T)
    stems: np.ndarray  # (S, C, T), every stem of the data
    sources: tuple[str, ...]  # names of ``stems``
    sample_rate: int


def _read(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T), rate


def load_tracks(root: str | os.PathLike[str], split: str, limit: int | None = None) -> list[Track]:
    """Every track of ``split``: MUSDB layout (``<split>/<track>/``) or wsj0-2mix (``tt/mix`` ...)."""
    folder_root = Path(root)
    tracks: list[Track] = []
    musdb = list(music.iter_tracks(folder_root, split))
    if musdb:
        for folder in musdb[:limit]:
            mixture, rate = _read(folder / "mixture.wav")
            names = tuple(s for s in music.SOURCES if (folder / f"{s}.wav").is_file())
            stems = np.stack([_read(folder / f"{s}.wav")[0] for s in names])
            tracks.append(Track(folder.name, mixture, stems, names, rate))
        return tracks
    split_folder = speech.SPLIT_ALIASES.get(split, split)
    for ident in speech.list_mixtures(str(folder_root), split_folder)[:limit]:
        mixture, rate = _read(folder_root / split_folder / "mix" / f"{ident}.wav")
        stems = np.stack([_read(folder_root / split_folder / s / f"{ident}.wav")[0] for s in speech.SOURCES])
        tracks.append(Track(ident, mixture, stems, speech.SOURCES, rate))
    if not tracks:
        raise EvaluationError(f"no tracks in {root} for split {split!r} (MUSDB or wsj0-2mix layout)")
    return tracks


# --------------------------------------------------------------------------- model


Separate = Callable[[torch.Tensor, int | None], torch.Tensor]


def _adapt(model: Separator, separate: Separate, mixture: np.ndarray, rate: int, target: int | None) -> np.ndarray:
    """Run ``separate`` on ``mixture`` (C, T) at the data's rate and channels; returns (S, C, T)."""
    d = model.describe()
    audio = mixture
    if rate != d.sample_rate:
        import soxr

        audio = np.asarray(soxr.resample(audio.T, rate, d.sample_rate, quality="HQ"), dtype=np.float32).T
    channels = audio.shape[0]
    if d.audio_channels == channels:
        out = separate(torch.from_numpy(np.ascontiguousarray(audio)), target).detach().cpu().numpy()
    elif d.audio_channels == 1:  # a mono model on multichannel audio: each channel on its own
        out = np.concatenate(
            [
                separate(torch.from_numpy(np.ascontiguousarray(audio[c : c + 1])), target).cpu().numpy()
                for c in range(channels)
            ],
            axis=1,
        )
    elif channels == 1:  # a multichannel model on mono audio: duplicate, then average the outputs
        wide = np.repeat(audio, d.audio_channels, axis=0)
        out = separate(torch.from_numpy(wide), target).detach().cpu().numpy().mean(1, keepdims=True)
    else:
        raise EvaluationError(f"cannot run a {d.audio_channels}-channel model on {channels}-channel audio")
    if rate != d.sample_rate:
        import soxr

        out = np.stack([np.asarray(soxr.resample(s.T, d.sample_rate, rate, quality="HQ")).T for s in out])
    length = mixture.shape[-1]
    if out.shape[-1] < length:
        out = np.pad(out, [(0, 0), (0, 0), (0, length - out.shape[-1])])
    return np.asarray(out[..., :length], dtype=np.float32)


PLANS = ("file", "live")


def _default_separate(model: Separator, plan: str = "file") -> Separate:
    """What a job on the server computes: ``"file"``, a file job's path (the model's
    whole-signal ``separate_offline`` when it has one, as :mod:`server.engine.whole`
    chooses; else the throughput plan :func:`models.apply.file_plan`), or ``"live"``,
    the live sessions' plan :func:`models.apply.plan_for`."""
    from stemserve.models.apply import file_plan, plan_for, separate_signal

    if plan not in PLANS:
        raise EvaluationError(f"unknown plan {plan!r}; choose one of {', '.join(PLANS)}")
    d = model.describe()
    offline = None
    if plan == "file" and not (d.domain == "waveform" and d.causal):
        offline = getattr(model, "separate_offline", None)
    chosen = file_plan(d) if plan == "file" else plan_for(d)

    def run(wav: torch.Tensor, target: int | None) -> torch.Tensor:
        with torch.no_grad():
            if offline is not None:
                stems = torch.as_tensor(offline(wav))
                return stems if target is None else stems[target : target + 1]
            return torch.as_tensor(separate_signal(model, wav, target, plan=chosen))

    return run


def _irm_fft(model: Separator) -> tuple[int, int]:
    d = model.describe()
    if d.domain == "spectrogram" and d.n_fft and d.hop_length:
        return d.n_fft, d.hop_length
    return WAVEFORM_IRM_FFT


def _stem_mapping(model: Separator, track: Track) -> list[int]:
    """Index into ``track.stems`` of each model source (speech: speaker k <-> s_k, matched later by PIT)."""
    names = model.describe().sources
    if set(names) <= set(track.sources):
        return [track.sources.index(n) for n in names]
    if track.sources == speech.SOURCES and len(names) == len(speech.SOURCES):
        return list(range(len(names)))
    raise EvaluationError(f"model sources {names} do not match the data's stems {track.sources}")


# --------------------------------------------------------------------------- evaluation


def evaluate(
    model: Separator,
    data: str | os.PathLike[str],
    split: str = "test",
    targets: Sequence[str] | None = None,
    chunk_seconds: float | None = None,
    max_tracks: int | None = None,
    separate: Separate | None = None,
    plan: str = "file",
    progress: bool = False,
    keep_first: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """Score ``model`` on ``split`` of ``data`` against the IRM and mixture bounds.

    Args:
        targets: stems to score (default: every source of the model).
        chunk_seconds: SDR chunk length; None means 1 s for music, whole utterances for speech.
        separate: ``separate(wav (C, T), target) -> (S, C, T)``; default: the
            server's path for ``plan``.
        plan: ``"file"`` (default) scores what a file job (``stemserve separate``)
            computes, ``"live"`` what a live session streams (the live plan).
        keep_first: also return the first track's mixture / estimates / references
            for :func:`write_figure`.
    Returns:
        ``(report, first)`` where ``report`` is JSON-able (NaN as None).
    """
    d = model.describe()
    separate = separate or _default_separate(model, plan)
    tracks = load_tracks(data, split, max_tracks)
    is_speech = tracks[0].sources == speech.SOURCES
    chunk = (0.0 if is_speech else 1.0) if chunk_seconds is None else chunk_seconds
    names = list(d.sources)
    chosen = list(targets) if targets else names
    unknown = [t for t in chosen if t not in names]
    if unknown:
        raise EvaluationError(f"targets {unknown} are not sources of the model {names}")
    n_fft, hop = _irm_fft(model)
    model.eval()
    rows: list[dict[str, Any]] = []
    first: dict[str, np.ndarray] | None = None
    from tqdm import tqdm

    for track in tqdm(tracks, desc="evaluating", unit="track", disable=not progress):
        index = _stem_mapping(model, track)
        if d.conditioned and not joint_stems(d, [names.index(t) for t in chosen]):
            estimates = np.concatenate(
                [_adapt(model, separate, track.mixture, track.sample_rate, names.index(t)) for t in chosen]
            )
            order = [names.index(t) for t in chosen]
        else:  # every stem in one call (a jointly normalised conditioned model too)
            every = _adapt(model, separate, track.mixture, track.sample_rate, None)
            if every.shape[0] != len(names):
                raise EvaluationError(f"separate returned {every.shape[0]} sources, the model has {len(names)}")
            if is_speech:
                every = every[best_permutation(track.stems[index], every)]
            order = [names.index(t) for t in chosen]
            estimates = every[order]
        references = track.stems[[index[i] for i in order]]
        oracle = ideal_ratio_mask(track.mixture, track.stems, n_fft, hop)[[index[i] for i in order]]
        lower = np.repeat(track.mixture[None], len(order), axis=0)
        row: dict[str, Any] = {"name": track.name, "seconds": track.mixture.shape[-1] / track.sample_rate}
        for method, values in (("model", estimates), ("irm", oracle), ("mixture", lower)):
            scores = score(references, values, track.sample_rate, chunk)
            row[method] = {chosen[i]: scores[i] for i in range(len(chosen))}
        rows.append(row)
        if keep_first and first is None:
            first = {"mixture": track.mixture, "estimates": estimates, "references": references}
    summary = {
        method: {
            stem: {metric: _median([r[method][stem][metric] for r in rows]) for metric in ("sdr", "si_sdr")}
            for stem in chosen
        }
        for method in METHODS
    }
    share = irm_share(summary, chosen)
    report = {
        "model": d.architecture,
        "description": d.to_dict(),
        "data": str(Path(data).resolve()),
        "split": split,
        "sample_rate": tracks[0].sample_rate,
        "sources": chosen,
        "tracks": rows,
        "summary": summary,
        "irm_share": share,
        "metrics": {
            "sdr": (
                f"BSSEval v4 SDR (fast_bss_eval, {FILTER_LENGTH}-tap filter), "
                + (f"median over {chunk:g} s chunks and channels" if chunk > 0 else "whole track, median over channels")
                + f", silent reference chunks skipped, clamped to +-{CLAMP_DB:g} dB"
            ),
            "si_sdr": "scale-invariant SDR of the whole track (zero-mean, channels together)",
            "irm": f"oracle ideal ratio mask |S_j| / sum_k |S_k|, STFT n_fft={n_fft} hop={hop}",
            "mixture": "the mixture as the estimate of every stem",
            "summary": "median over tracks, silent stems left out",
            "irm_share": "(model - mixture) / (irm - mixture) of the median SDRs, per stem, and their mean",
            "permutation": "best mean SI-SDR per mixture" if is_speech else "none (stems matched by name)",
        },
    }
    if isinstance(model, MultitaskUNet) and not is_speech:
        try:
            report["heads"] = head_metrics(model, data, split, max_tracks)
            metrics: dict[str, str] = report["metrics"]  # type: ignore[assignment]
            metrics["heads"] = (
                "over every STFT frame of the tracks pooled (windows of the model's frames, side by side), "
                "against notes.json: raw pitch accuracy within 50 cents on voiced frames, voicing recall "
                "and false alarm, activity F1 per stem"
            )
        except labels.LabelError as err:
            log.warning("no head metrics: %s", err)
    if first is not None:
        first["names"] = np.array(chosen)
        first["n_fft"] = np.array([n_fft, hop])
        first["sample_rate"] = np.array(tracks[0].sample_rate)
    return _jsonable(report), first


def head_outputs(model: MultitaskUNet, mixture: torch.Tensor, batch: int = 8) -> HeadOutputs:
    """The heads' logits for every frame of ``mixture (C, T)``'s STFT (no centring, ``N`` frames).

    The frames are cut into windows of the model's ``window_frames``, side by side (the last
    one zero-padded), and run ``batch`` windows at a time: ``activity (1, K, N)``,
    ``voicing (1, N)``, ``pitch (1, P, N)``.
    """
    c = model.config
    if mixture.dim() != 2 or mixture.shape[0] != c.audio_channels:
        raise EvaluationError(f"expected a ({c.audio_channels}, samples) mixture, got {tuple(mixture.shape)}")
    if mixture.shape[-1] < c.n_fft:
        raise EvaluationError(f"a mixture of {mixture.shape[-1]} samples has no {c.n_fft}-sample frame")
    mag = stft(mixture, c.n_fft, c.hop_length).abs()  # (C, F, N)
    frames, width = mag.shape[-1], c.window_frames
    count = -(-frames // width)
    mag = torch.nn.functional.pad(mag, (0, count * width - frames))
    windows = mag.view(*mag.shape[:2], count, width).permute(2, 0, 1, 3)  # (count, C, F, width)
    parts: list[HeadOutputs] = []
    with torch.no_grad():
        for i in range(0, count, batch):
            parts.append(model.forward_heads(windows[i : i + batch])[1])

    def joined(name: str) -> torch.Tensor:
        x = torch.cat([getattr(p, name) for p in parts])  # (count, ..., width)
        return torch.cat(list(x), dim=-1)[None, ..., :frames]  # (1, ..., N)

    return HeadOutputs(activity=joined("activity"), voicing=joined("voicing"), pitch=joined("pitch"))


def head_metrics(
    model: MultitaskUNet, data: str | os.PathLike[str], split: str = "test", max_tracks: int | None = None
) -> dict[str, float]:
    """:func:`models.multitask_unet.multitask_metrics` over every frame of ``split``'s tracks, pooled.

    Each track's labels are :func:`models.data.labels.frame_labels` of its ``notes.json`` at the
    frames of :func:`head_outputs`. Raises :class:`~models.data.labels.LabelError` when a track
    has no notes, :class:`EvaluationError` when the data's rate is not the model's.
    """
    c = model.config
    model.eval()
    outputs: list[HeadOutputs] = []
    activity: list[torch.Tensor] = []
    f0: list[torch.Tensor] = []
    folders = list(music.iter_tracks(data, split))[:max_tracks]
    if not folders:
        raise EvaluationError(f"no tracks in {data} for split {split!r} (MUSDB layout)")
    for folder in folders:
        audio, rate = _read(folder / "mixture.wav")
        if rate != c.sample_rate:
            raise EvaluationError(f"{folder}: {rate} Hz audio for a {c.sample_rate} Hz model")
        heads = head_outputs(model, torch.from_numpy(audio))
        frames = heads.voicing.shape[-1]
        truth = labels.frame_labels(labels.read_notes(folder), c.sources, 0, frames, c.n_fft, c.hop_length, rate)
        outputs.append(heads)
        activity.append(torch.from_numpy(truth.activity)[None])
        f0.append(torch.from_numpy(truth.f0)[None])
    pooled = HeadOutputs(
        activity=torch.cat([h.activity for h in outputs], dim=-1),
        voicing=torch.cat([h.voicing for h in outputs], dim=-1),
        pitch=torch.cat([h.pitch for h in outputs], dim=-1),
    )
    metrics = multitask_metrics(model, pooled, torch.cat(activity, dim=-1), torch.cat(f0, dim=-1))
    metrics["frames"] = float(pooled.voicing.shape[-1])
    return metrics


def irm_share(summary: dict[str, Any], stems: Sequence[str]) -> dict[str, float]:
    """How much of the oracle IRM's SDR gain over the mixture the model reaches, per stem and ``"mean"``.

    ``(model - mixture) / (irm - mixture)`` of the median SDRs: 0 is the mixture,
    1 the oracle. NaN for a stem whose oracle does not beat the mixture.
    """
    out: dict[str, float] = {}
    for stem in stems:
        model, irm, mixture = (summary[m][stem]["sdr"] for m in ("model", "irm", "mixture"))
        gain = irm - mixture
        out[stem] = (model - mixture) / gain if gain > 0 else math.nan
    out["mean"] = _mean([out[s] for s in stems])
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.median(finite)) if finite else math.nan


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- figure


def write_figure(report: dict[str, Any], first: dict[str, np.ndarray], path: str | os.PathLike[str]) -> Path:
    """A PNG: spectrograms of mixture / estimate / reference of the first track's first
    stem, and per-stem median SDR bars for model, IRM and mixture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(n) for n in first["names"]]
    n_fft, hop = (int(v) for v in first["n_fft"])
    rate = int(first["sample_rate"])
    panels = [
        ("mixture", first["mixture"]),
        (f"estimate: {names[0]}", first["estimates"][0]),
        (f"reference: {names[0]}", first["references"][0]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    spectra = []
    for _, audio in panels:
        mono = torch.from_numpy(np.asarray(audio, dtype=np.float32).mean(0))
        if mono.shape[-1] < n_fft:
            mono = torch.nn.functional.pad(mono, (0, n_fft - mono.shape[-1]))
        spectra.append(20 * np.log10(stft(mono, n_fft, hop).abs().numpy() + 1e-6))
    top = max(float(s.max()) for s in spectra)
    for ax, (title, _), spectrum in zip(axes.flat[:3], panels, spectra, strict=True):
        extent = (0.0, spectrum.shape[1] * hop / rate, 0.0, rate / 2000)
        image = ax.imshow(spectrum, origin="lower", aspect="auto", extent=extent, vmin=top - 80, vmax=top, cmap="magma")
        ax.set_title(f"{report['tracks'][0]['name']} - {title}")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=list(axes.flat[:3]), label="dB")
    ax = axes.flat[3]
    width = 0.27
    positions = np.arange(len(names))
    for i, method in enumerate(METHODS):
        values = [report["summary"][method][n]["sdr"] for n in names]
        heights = [np.nan if v is None else v for v in values]
        ax.bar(positions + (i - 1) * width, heights, width, label=method)
    ax.set_xticks(positions, names)
    ax.set_ylabel("median SDR (dB)")
    ax.set_title(f"{report['model']} on {report['split']} ({len(report['tracks'])} tracks)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
