"""Torch datasets over rendered (or real) separation data.

* :class:`MusicStems`: the MUSDB18-HQ folder layout
  (``root/<split>/<track>/{mixture,drums,bass,other,vocals}.wav``) as
  ``(mixture (C, T), stems (S, C, T))``, stems in :data:`models.data.music.SOURCES`
  order (``drums, bass, other, vocals``) unless ``sources`` names another order.
* :class:`SpeechMixtures`: the wsj0-2mix layout (``root/{tr,cv,tt}/{mix,s1,s2}/<id>.wav``)
  as ``(mixture (1, T), sources (2, 1, T))``.

Training examples (``random_crop=True``, the default for the training split)
are random crops, optionally augmented by event mixing
(:mod:`models.data.augment`); example ``i`` of epoch ``e`` is a pure function of
``(seed, e, i)``, whatever DataLoader worker computes it. Evaluation examples
(``random_crop=False``) are the consecutive ``segment``-long windows of every
track, in order, the last one zero-padded. Audio is read from disk per example
(only the window needed), resampled with soxr if the files' rate differs from
``sample_rate``, and down- or up-mixed to ``channels`` when given.

With ``label_frames=(n_fft, hop)``, :class:`MusicStems` examples also carry the
renderer's per-STFT-frame labels (stem activity, lead f0) from each track's
``notes.json``, computed from the same events as the audio, so crops, remixing,
dropped stems and repitching keep them aligned (:meth:`MusicStems.labels_of`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from stemserve.models.data import labels, music, speech
from stemserve.models.data.augment import (
    NO_AUGMENT,
    AugmentConfig,
    StemEvent,
    fit_length,
    generator_for,
    render_events,
    sample_events,
)


class DataError(ValueError):
    """A data folder that is missing, empty or inconsistent, with what was expected."""


class _StemFolders(Dataset[tuple[torch.Tensor, ...]]):
    """Shared machinery: ``files[i]`` is ``(mixture_path, [stem_path, ...])`` for track ``i``.

    ``files`` lists *every* stem of a track (so that an augmented mixture is the sum
    of all of them); ``select`` picks and orders the stems returned.
    """

    def __init__(
        self,
        files: list[tuple[Path, list[Path]]],
        select: Sequence[int],
        segment_seconds: float | None,
        sample_rate: int | None,
        channels: int | None,
        augment: AugmentConfig | None,
        random_crop: bool,
        seed: int,
        items_per_track: int | None,
    ) -> None:
        if not files:
            raise DataError("no tracks")
        infos = [sf.info(str(mixture)) for mixture, _ in files]
        rates = {info.samplerate for info in infos}
        if len(rates) != 1:
            raise DataError(f"tracks have different sample rates {sorted(rates)}")
        self.files = files
        self.select = list(select)
        self.file_rate = rates.pop()
        self.sample_rate = sample_rate or self.file_rate
        self.file_channels = infos[0].channels
        self.channels = channels or self.file_channels
        self.lengths = [info.frames for info in infos]  # in file samples
        if segment_seconds is not None and segment_seconds <= 0:
            raise ValueError("segment_seconds must be > 0 (or None for whole tracks)")
        if segment_seconds is None and random_crop:
            raise ValueError("random crops need segment_seconds")
        self.segment = None if segment_seconds is None else int(round(segment_seconds * self.sample_rate))
        self.augment = augment
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0
        if random_crop:
            assert self.segment is not None
            seconds = float(np.mean(self.lengths)) / self.file_rate
            per_track = items_per_track or max(1, int(seconds * self.sample_rate // self.segment))
            self.windows: list[tuple[int, int]] = []
            self._length = len(files) * per_track
        else:
            self.windows = []
            for track, frames in enumerate(self.lengths):
                if self.segment is None:
                    self.windows.append((track, 0))
                    continue
                step = self._file_samples(self.segment)
                count = max(1, math.ceil(frames / step))
                self.windows.extend((track, k * step) for k in range(count))
            self._length = len(self.windows)

    # -- sizes and rates
    def _file_samples(self, samples: int) -> int:
        """Samples at the file rate that cover ``samples`` at the dataset rate."""
        return int(math.ceil(samples * self.file_rate / self.sample_rate))

    def __len__(self) -> int:
        return self._length

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random crops / augmentations ``__getitem__`` returns."""
        self.epoch = int(epoch)

    @property
    def num_sources(self) -> int:
        """Stems returned per example."""
        return len(self.select)

    # -- reading
    def _read(self, path: Path, offset: int, samples: int | None) -> torch.Tensor:
        """``samples`` (dataset rate) from file sample ``offset`` as ``(channels, samples)`` float32."""
        frames = -1 if samples is None else self._file_samples(samples)
        audio, _ = sf.read(str(path), start=offset, frames=frames, dtype="float32", always_2d=True)
        audio = audio.T  # (C, T)
        if self.file_rate != self.sample_rate:
            import soxr

            audio = np.asarray(soxr.resample(audio.T, self.file_rate, self.sample_rate, quality="HQ")).T
        if samples is not None:
            audio = fit_length(audio, samples)
        if audio.shape[0] != self.channels:
            if self.channels == 1:
                audio = audio.mean(0, keepdims=True)
            elif audio.shape[0] == 1:
                audio = np.repeat(audio, self.channels, axis=0)
            else:
                raise DataError(f"{path}: {audio.shape[0]} channels, cannot make {self.channels}")
        return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        mixture, stems, _ = self._example(index)
        return mixture, stems

    def _example(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[StemEvent]]:
        """``(mixture (C, T), selected stems (S, C, T), one event per stem of files[track])``.

        The events say where each stem's audio came from (track, file offset, speed, dropped), which
        is what labels of the example must follow; evaluation windows get plain events.
        """
        if not 0 <= index < len(self):
            raise IndexError(index)
        if not self.random_crop:
            track, offset = self.windows[index]
            mixture_path, stem_paths = self.files[track]
            stems = torch.stack([self._read(stem_paths[i], offset, self.segment) for i in self.select])
            plain = [StemEvent(s, track, offset, 1.0, False, False) for s in range(len(stem_paths))]
            return self._read(mixture_path, offset, self.segment), stems, plain
        assert self.segment is not None
        generator = generator_for(self.seed, self.epoch, index)
        events = sample_events(
            base_track=index % len(self.files),
            track_lengths=self.lengths,
            num_stems=len(self.files[0][1]),
            segment=self._file_samples(self.segment),
            config=self.augment or NO_AUGMENT,
            generator=generator,
        )
        stems = render_events(
            events, lambda track, stem, offset, n: self._read(self.files[track][1][stem], offset, n),
            self.segment,
        )  # fmt: skip
        # The mixture of all (augmented) stems, exactly; then the stems asked for.
        return stems.sum(0), stems[self.select], events


class MusicStems(_StemFolders):
    """Stems of a MUSDB-layout folder: ``(mixture (C, T), stems (S, C, T))``.

    Args:
        root: folder holding ``<split>/<track>/mixture.wav`` and one wav per stem.
        split: ``train``, ``valid`` or ``test`` (any sub-folder name works).
        segment_seconds: example length; None for whole tracks (evaluation).
        sample_rate: rate of the returned audio (files are resampled if needed).
        augment: event-mixing augmentation for random crops, or None.
        sources: stem names in the order to return them.
        channels: channels of the returned audio (None: as in the files).
        random_crop: random windows (default: for ``train``) or every window in order.
        seed: seed of the random windows / augmentation.
        items_per_track: random examples per track and epoch (default: track length / segment).
        label_frames: ``(n_fft, hop)`` of an STFT without centring: each example then also
            carries the renderer's labels of its frames (see :meth:`labels_of`), as
            ``(mixture, stems, activity (S, N), f0 (N,))``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        segment_seconds: float | None,
        sample_rate: int = music.SAMPLE_RATE,
        augment: AugmentConfig | None = None,
        sources: Sequence[str] = music.SOURCES,
        channels: int | None = None,
        random_crop: bool | None = None,
        seed: int = 0,
        items_per_track: int | None = None,
        label_frames: tuple[int, int] | None = None,
    ) -> None:
        tracks = list(music.iter_tracks(root, split))
        if not tracks:
            raise DataError(f"no tracks in {Path(root) / split} (expected <track>/mixture.wav, MUSDB layout)")
        self.sources = tuple(sources)
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources must be distinct names, got {self.sources}")
        self.tracks = tracks
        # Every stem is read for augmented examples (their mixture is the sum of all stems).
        every = [*music.SOURCES, *(s for s in self.sources if s not in music.SOURCES)]
        files = []
        for track in tracks:
            stems = [track / f"{name}.wav" for name in every]
            missing = [p.name for p in stems if not p.is_file()]
            if missing:
                raise DataError(f"{track}: missing {missing}")
            files.append((track / "mixture.wav", stems))
        crop = split == "train" if random_crop is None else random_crop
        select = [every.index(name) for name in self.sources]
        super().__init__(files, select, segment_seconds, sample_rate, channels, augment, crop, seed, items_per_track)
        self.every = tuple(every)
        self.label_frames = label_frames
        self._notes: dict[int, dict[str, np.ndarray]] = {}
        if label_frames is not None:
            n_fft, hop = label_frames
            if n_fft < 1 or hop < 1:
                raise ValueError(f"label_frames must be (n_fft, hop) >= 1, got {label_frames}")
            for index in range(len(tracks)):
                self._notes_of(index)  # fail now, naming the track, when a notes file is missing

    def track_names(self) -> list[str]:
        return [t.name for t in self.tracks]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        mixture, stems, events = self._example(index)
        if self.label_frames is None:
            return mixture, stems
        activity, f0 = self.labels_of(events, mixture.shape[-1])
        return mixture, stems, activity, f0

    def _notes_of(self, track: int) -> dict[str, np.ndarray]:
        """Track ``track``'s notes per stem (read once), every stem of ``every`` present."""
        if track not in self._notes:
            try:
                notes = labels.read_notes(self.tracks[track])
            except labels.LabelError as err:
                raise DataError(str(err)) from err
            missing = [name for name in self.every if name not in notes]
            if missing:
                raise DataError(f"{self.tracks[track] / 'notes.json'} has no notes for {missing}")
            self._notes[track] = notes
        return self._notes[track]

    def labels_of(self, events: Sequence[StemEvent], samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels of the STFT frames of an example of ``samples`` samples built from ``events``.

        Frame ``k`` (samples ``k * hop ...`` of the example, ``N = (samples - n_fft) // hop + 1``
        frames) is labelled at its centre, mapped back to where its audio came from: each stem
        to its own event's track at ``offset + centre * speed`` (remixed stems come from other
        songs, repitched ones play ``speed`` times as fast and ``12 log2(speed)`` semitones
        higher). A dropped stem is silent, a dropped lead unvoiced; gains and channel swaps
        change no label. Returns ``activity (S, N)`` in the order of ``sources`` and the lead's
        ``f0 (N,)`` (MIDI pitch, 0 where unvoiced), both float32.
        """
        if self.label_frames is None:
            raise ValueError("this dataset was made without label_frames")
        n_fft, hop = self.label_frames
        frames = max(0, (samples - n_fft) // hop + 1)
        centres = (np.arange(frames) * hop + n_fft / 2) / self.sample_rate  # seconds into the example

        def times(event: StemEvent) -> np.ndarray:
            return event.offset / self.file_rate + centres * event.speed  # seconds into the event's track

        activity = np.zeros((len(self.select), frames), dtype=np.float32)
        for row, stem in enumerate(self.select):
            event = events[stem]
            if not event.dropped:
                activity[row] = labels.activity_at(self._notes_of(event.track)[self.every[stem]], times(event))
        f0 = np.zeros(frames, dtype=np.float32)
        lead = events[self.every.index(labels.LEAD)] if labels.LEAD in self.every else None
        if lead is not None and not lead.dropped:
            notes = self._notes_of(lead.track)[labels.LEAD]
            pitch = labels.lead_f0_at(notes, times(lead))
            f0 = np.where(pitch > 0, pitch + 12.0 * np.log2(lead.speed), 0.0).astype(np.float32)
        return torch.from_numpy(activity), torch.from_numpy(f0)


class SpeechMixtures(_StemFolders):
    """Two-speaker mixtures in the wsj0-2mix layout: ``(mixture (1, T), sources (2, 1, T))``.

    Args:
        root: folder holding ``{tr,cv,tt}/{mix,s1,s2}/<id>.wav``.
        split: ``tr``/``cv``/``tt`` (or ``train``/``valid``/``test``).
        segment_seconds: example length; None for whole utterances.
        sample_rate: rate of the returned audio (None: as in the files).
        augment: event mixing (remixing speakers across mixtures, gains), or None.
        random_crop: random windows (default: for ``tr``) or every window in order.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        segment_seconds: float | None = None,
        sample_rate: int | None = None,
        augment: AugmentConfig | None = None,
        channels: int | None = 1,
        random_crop: bool | None = None,
        seed: int = 0,
        items_per_track: int | None = None,
    ) -> None:
        folder = speech.SPLIT_ALIASES.get(split, split)
        ids = speech.list_mixtures(root, folder)
        if not ids:
            raise DataError(f"no mixtures in {Path(root) / folder} (expected mix/, s1/, s2/ with <id>.wav)")
        self.ids = ids
        self.sources = speech.SOURCES
        base = Path(root) / folder
        files = [(base / "mix" / f"{i}.wav", [base / s / f"{i}.wav" for s in speech.SOURCES]) for i in ids]
        crop = folder == "tr" if random_crop is None else random_crop
        super().__init__(files, [0, 1], segment_seconds, sample_rate, channels, augment, crop, seed, items_per_track)

    def track_names(self) -> list[str]:
        return list(self.ids)
