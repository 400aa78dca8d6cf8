"""Training of any registry preset on rendered (or real) data, with the seed losses.

One objective per model family, chosen from the model's description alone:

==================================  =====================================================================
model                               loss (all in :mod:`models.losses`)
==================================  =====================================================================
spectrogram, ``separate`` -> stems  ``mask_inference_l1`` on magnitudes (unet, multi_unet, open_unmix*,
                                    mask_inference); wrapped in ``pit`` for unordered sources (speech)
``multitask_unet``                  ``mask_inference_l1`` plus the heads' weighted ``multitask_loss``
                                    (:mod:`models.multitask_unet`) against the renderer's labels
spectrogram, conditioned            a random target per item; ``mask_inference_l1`` against that stem
spectrogram, conditioned, with      every target per item; ``joint_mask_l1``: the stems as estimated and
``extras["joint_stems"]``           as jointly normalised (:mod:`models.joint`)
deep_clustering                     ``deep_clustering_loss`` of ``embed`` vs the ideal binary assignment,
                                    weighted by the mixture magnitude
chimera                             ``chimera_loss`` (DC + MI, ``alpha`` from the config); the MI part
                                    permutation-invariant for speech
waveform, speech (speaker sources)  ``pit(neg_si_snr)`` (TasNet, Conv-TasNet)
waveform, music                     ``mse`` for Wave-U-Net, ``length_scaled_l1`` otherwise (Demucs, ...)
==================================  =====================================================================

Spectrogram models see magnitudes of :func:`models.stft.stft` (no centring) on
random windows of exactly ``describe().window_frames`` frames; the window is
cut from the waveform (frame ``k`` starts at sample ``k * hop``), which gives the
same frames as cutting the full STFT and costs less.

Music presets (44.1 kHz, stems among drums/bass/other/vocals) train on
:class:`~models.data.datasets.MusicStems`, speech presets (speaker sources, or 8 /
16 kHz) on :class:`~models.data.datasets.SpeechMixtures`; stems are matched to the
model's ``describe().sources`` by name.

Every random choice is a function of ``(seed, step)`` or ``(seed, epoch, index)``,
and ``--resume`` restores weights, Adam state, RNG state and the position in the
epoch from ``<out>.train-state.pt``, so a resumed run continues exactly as an
uninterrupted one would. The best checkpoint (lowest validation loss) is written
to ``out`` with :func:`models.checkpoint.save_checkpoint`.

Multi-GPU: launch with ``torchrun --nproc_per_node N -m stemserve.server.cli train ...``;
when ``WORLD_SIZE > 1`` the objective is wrapped in ``DistributedDataParallel``,
the data sharded with ``DistributedSampler``, and rank 0 validates and saves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from stemserve.models import losses, registry
from stemserve.models.base import Separator
from stemserve.models.checkpoint import load_checkpoint, same_weights, save_checkpoint
from stemserve.models.data import music
from stemserve.models.data.augment import AugmentConfig, generator_for
from stemserve.models.data.datasets import DataError, MusicStems, SpeechMixtures
from stemserve.models.description import ModelDescription
from stemserve.models.joint import joint_power
from stemserve.models.multitask_unet import MultitaskUNet, multitask_loss
from stemserve.models.stft import stft

log = logging.getLogger(__name__)

STATE_FORMAT = "stemserve-train-state"
STATE_VERSION = 1
SPEECH_RATES = (8000, 16000)

Objective = Literal[
    "mask_inference",
    "multitask",
    "conditioned",
    "conditioned_joint",
    "deep_clustering",
    "chimera",
    "si_snr",
    "mse",
    "l1",
]


class TrainError(ValueError):
    """Training cannot start or go on (mismatched data, bad options, diverged loss)."""


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``stemserve train`` takes; defaults are the CLI's."""

    model: str
    data: str
    out: str
    steps: int = 1000
    batch: int = 8
    lr: float = 1e-3
    device: str | None = None  # default: cuda if available, else cpu
    seed: int = 0
    segment: float | None = None  # seconds per example; default depends on the model
    valid_every: int = 100
    resume: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    workers: int = 0
    clip: float = 5.0
    threads: int | None = None  # default: os.cpu_count() (shared among local ranks)
    valid_items: int | None = None  # cap on validation examples (evenly spread), None = all
    augment: bool = True
    repitch: float = 0.0  # chance that a training stem is repitched (up to 2 semitones with its tempo)
    progress: bool = True
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min: float = 0.0  # the cosine schedule's last learning rate
    init: str | None = None  # checkpoint whose weights start the run (fresh optimiser and step count)
    stop_after: int | None = None  # stop at this step; the learning-rate schedule still spans ``steps``
    command: str = ""  # the command line, stored in the checkpoint's metadata

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "valid_every"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1")
        if self.lr <= 0 or self.clip <= 0:
            raise TrainError("lr and clip must be > 0")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.steps:
            raise TrainError(f"stop_after must be within 1..steps ({self.steps}), got {self.stop_after}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise TrainError(f"lr_schedule must be 'constant' or 'cosine', not {self.lr_schedule!r}")
        if not 0 <= self.lr_min <= self.lr:
            raise TrainError("lr_min must be in [0, lr]")
        if self.segment is not None and self.segment <= 0:
            raise TrainError("segment must be > 0 seconds")
        if self.workers < 0:
            raise TrainError("workers must be >= 0")
        if not 0.0 <= self.repitch <= 1.0:
            raise TrainError(f"repitch is a probability in [0, 1], got {self.repitch}")
        if self.repitch and not self.augment:
            raise TrainError("repitch is an augmentation; it cannot be combined with augment off")


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    best_step: int
    best_val_loss: float
    history: list[dict[str, float]]
    wall_seconds: float
    main: bool = True  # False on the other ranks of a distributed run


@dataclass(frozen=True)
class Task:
    """What to train on and with which loss, decided from the model's description."""

    kind: Literal["music", "speech"]
    objective: Objective
    permutation_invariant: bool
    segment_samples: int


def learning_rate(options: TrainOptions, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based); a pure function of the step, so resume agrees."""
    if options.lr_schedule == "constant":
        return options.lr
    progress = min(step / max(options.steps - 1, 1), 1.0)
    return options.lr_min + (options.lr - options.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def state_path(out: str | os.PathLike[str]) -> Path:
    """Where the resumable training state of checkpoint ``out`` lives."""
    return Path(f"{out}.train-state.pt")


# --------------------------------------------------------------------------- task


def data_kind(description: ModelDescription) -> Literal["music", "speech"]:
    sources = set(description.sources)
    if sources <= set(music.SOURCES) and description.sample_rate not in SPEECH_RATES:
        return "music"
    if all(s.startswith("speaker") for s in sources) or description.sample_rate in SPEECH_RATES:
        return "speech"
    raise TrainError(f"cannot tell music from speech for sources {description.sources} at {description.sample_rate} Hz")


def choose_task(model: Separator, segment_seconds: float | None = None) -> Task:
    d = model.describe()
    kind = data_kind(d)
    unordered = kind == "speech" or bool(d.extras.get("unordered_sources"))
    objective: Objective
    if d.domain == "spectrogram":
        if d.architecture == "deep_clustering":
            objective = "deep_clustering"
        elif d.architecture == "chimera":
            objective = "chimera"
        elif d.conditioned:
            objective = "conditioned_joint" if d.extras.get("joint_stems") else "conditioned"
        elif isinstance(model, MultitaskUNet):
            objective = "multitask"
        else:
            objective = "mask_inference"
        window = d.window_samples
        assert window is not None and d.hop_length is not None and d.window_frames is not None
        default = window + d.hop_length * (d.window_frames // 4)  # room for a random frame offset
        wanted = default if segment_seconds is None else int(round(segment_seconds * d.sample_rate))
        segment = max(wanted, window)
    else:
        if kind == "speech":
            objective = "si_snr"
        elif d.architecture == "wave_unet":
            objective = "mse"
        else:
            objective = "l1"
        default = d.segment or int((2.0 if kind == "speech" else 4.0) * d.sample_rate)
        segment = default if segment_seconds is None else int(round(segment_seconds * d.sample_rate))
    if kind == "speech" and len(d.sources) != 2:
        raise TrainError(f"speech data has 2 speakers; the model has sources {d.sources}")
    return Task(kind, objective, unordered, segment)


# --------------------------------------------------------------------------- objective


def _align(estimate: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """``estimate[b, permutation[b]]`` for every item: the PIT-chosen order."""
    rows = torch.arange(estimate.shape[0], device=estimate.device)[:, None]
    return estimate[rows, permutation]


class TrainingObjective(nn.Module):
    """The model plus its loss, as one module (so DistributedDataParallel sees one forward).

    ``forward(mixture (B, C, T), stems (B, S, C, T), frame_offset (B,), target (B,))``
    returns the scalar loss. ``frame_offset`` (spectrogram models: the first frame of
    the window) and ``target`` (conditioned models) are drawn by the caller. The
    multitask objective also takes the example's labels, ``activity (B, S, N)`` and
    ``f0 (B, N)`` for the N STFT frames of the whole example, and cuts the window's
    frames out of them; after each call ``parts`` holds its separation and head losses.
    """

    def __init__(self, model: Separator, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task = task
        d = model.describe()
        self.description = d
        self.alpha = float(getattr(model.config, "alpha", 0.975))
        self.parts: dict[str, float] = {}

    def forward(
        self,
        mixture: torch.Tensor,
        stems: torch.Tensor,
        frame_offset: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        activity: torch.Tensor | None = None,
        f0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        d, task = self.description, self.task
        if d.domain == "waveform":
            estimate = self.model.separate(mixture)
            if estimate.shape != stems.shape:
                raise TrainError(f"model returned {tuple(estimate.shape)} for references {tuple(stems.shape)}")
            if task.objective == "si_snr":
                return losses.pit(losses.neg_si_snr, estimate, stems)[0]
            if task.objective == "mse":
                return losses.mse(estimate, stems)
            return losses.length_scaled_l1(estimate, stems)

        assert d.n_fft is not None and d.hop_length is not None and d.window_samples is not None
        if frame_offset is None:
            frame_offset = torch.zeros(mixture.shape[0], dtype=torch.long)
        window = d.window_samples
        starts = (frame_offset * d.hop_length).tolist()
        mixture = torch.stack([mixture[b, :, s : s + window] for b, s in enumerate(starts)])  # (B, C, W)
        stems = torch.stack([stems[b, :, :, s : s + window] for b, s in enumerate(starts)])  # (B, S, C, W)
        mag = stft(mixture, d.n_fft, d.hop_length).abs()  # (B, C, F, T)
        target_mag = stft(stems, d.n_fft, d.hop_length).abs()  # (B, S, C, F, T)

        if task.objective == "deep_clustering":
            embedding = self.model.embed(mag)  # type: ignore[operator]
            assignment = losses.ideal_binary_assignment(target_mag)
            return losses.deep_clustering_loss(embedding, assignment, weights=mag.flatten(1))
        if task.objective == "chimera":
            estimate, embedding = self.model(mag)
            if task.permutation_invariant:
                _, permutation = losses.pit(losses.mask_inference_l1, estimate, target_mag)
                estimate = _align(estimate, permutation)
            assignment = losses.ideal_binary_assignment(target_mag)
            return losses.chimera_loss(
                estimate, target_mag, embedding, assignment, alpha=self.alpha, weights=mag.flatten(1)
            )
        if task.objective == "conditioned":
            if target is None:
                raise TrainError("a conditioned model needs a target per item")
            estimate = self.model.separate(mag, target)  # (B, 1, C, F, T)
            reference = target_mag[torch.arange(mag.shape[0]), target.to(target_mag.device)][:, None]
            return losses.mask_inference_l1(estimate, reference)
        if task.objective == "conditioned_joint":
            sources = target_mag.shape[1]
            batch = mag.shape[0]
            every = torch.arange(sources, device=mag.device).repeat(batch)  # item b, target s at b * S + s
            estimate = self.model.separate(mag.repeat_interleave(sources, dim=0), every)  # (B * S, 1, C, F, T)
            estimate = estimate.view(batch, sources, *estimate.shape[2:])
            return losses.joint_mask_l1(estimate, target_mag, mag, power=joint_power(d))
        if task.objective == "multitask":
            return self._multitask(mag, target_mag, frame_offset, activity, f0)
        estimate = self.model.separate(mag, None)
        if estimate.shape != target_mag.shape:
            raise TrainError(f"model returned {tuple(estimate.shape)} for references {tuple(target_mag.shape)}")
        if task.permutation_invariant:
            return losses.pit(losses.mask_inference_l1, estimate, target_mag)[0]
        return losses.mask_inference_l1(estimate, target_mag)

    def _multitask(
        self,
        mag: torch.Tensor,
        target_mag: torch.Tensor,
        frame_offset: torch.Tensor,
        activity: torch.Tensor | None,
        f0: torch.Tensor | None,
    ) -> torch.Tensor:
        """Separation L1 plus the heads' weighted losses on the window's frames."""
        if activity is None or f0 is None:
            raise TrainError("a multitask model needs activity and f0 labels per frame")
        assert isinstance(self.model, MultitaskUNet)
        frames = mag.shape[-1]
        rows = torch.arange(mag.shape[0], device=mag.device)[:, None]
        cols = frame_offset.to(mag.device)[:, None] + torch.arange(frames, device=mag.device)  # (B, frames)
        if int(cols.max()) >= f0.shape[-1]:
            raise TrainError(f"labels cover {f0.shape[-1]} frames; the window needs frame {int(cols.max())}")
        window_activity = activity.to(mag.device).permute(0, 2, 1)[rows, cols].permute(0, 2, 1)  # (B, S, frames)
        window_f0 = f0.to(mag.device)[rows, cols]  # (B, frames)
        masks, heads = self.model.forward_heads(mag)
        separation = losses.mask_inference_l1(masks * mag[:, None], target_mag)
        auxiliary, parts = multitask_loss(heads, window_activity, window_f0, self.model.config)
        self.parts = {"separation": float(separation.detach()), **parts}
        return separation + auxiliary


# --------------------------------------------------------------------------- data


AUDIBLE_TARGET_SHARE = 0.8  # conditioned training: share of items whose target is audible in the window
AUDIBLE = 1e-6  # mean square above which a stem counts as audible in a window (-60 dBFS)


def draw_targets(
    stems: torch.Tensor, frame_offset: torch.Tensor | None, description: ModelDescription, generator: torch.Generator
) -> torch.Tensor:
    """One target per item ``(B,)`` for a conditioned model, mostly among the audible stems.

    Drawn uniformly over all stems, a target is silent in a short window most of the
    time (a song's lead or bass pauses for whole sections, augmentation drops stems),
    and an L1 loss then drives that target's mask to zero everywhere. So
    ``AUDIBLE_TARGET_SHARE`` of the items draw among the stems audible in their
    window, the rest among all stems (the model still learns to output silence).
    """
    batch, sources = stems.shape[0], stems.shape[1]
    window = stems
    if frame_offset is not None and description.hop_length is not None and description.window_samples is not None:
        starts = (frame_offset * description.hop_length).tolist()
        window = torch.stack([stems[b, ..., s : s + description.window_samples] for b, s in enumerate(starts)])
    audible = window.pow(2).mean(dim=(2, 3)) > AUDIBLE  # (B, S)
    anywhere = torch.rand(batch, generator=generator) >= AUDIBLE_TARGET_SHARE
    allowed = audible | anywhere[:, None] | ~audible.any(dim=1, keepdim=True)
    weights = allowed.float() + 1e-12 * torch.rand(batch, sources, generator=generator)
    return torch.multinomial(weights, 1, generator=generator)[:, 0]


def make_datasets(
    description: ModelDescription, task: Task, data: str, seed: int, augment: bool, repitch: float = 0.0
) -> tuple[MusicStems | SpeechMixtures, MusicStems | SpeechMixtures]:
    """Training and validation datasets for ``task``, stems in the model's source order.

    ``repitch`` is the chance that a training stem is resampled to another pitch and
    tempo (:class:`~models.data.augment.AugmentConfig`); validation data is never augmented.
    """
    root = Path(data)
    seconds = task.segment_samples / description.sample_rate
    rate, channels = description.sample_rate, description.audio_channels
    train_set: MusicStems | SpeechMixtures
    valid_set: MusicStems | SpeechMixtures
    try:
        if task.kind == "music":
            if not (root / "train").is_dir():
                raise TrainError(f"{root} has no train/ folder: a music model needs MUSDB-layout data")
            # The multitask heads learn from the renderer's labels of each example's STFT frames.
            label_frames = None
            if task.objective == "multitask":
                assert description.n_fft is not None and description.hop_length is not None
                label_frames = (description.n_fft, description.hop_length)
            train_set = MusicStems(
                root, "train", seconds, rate, AugmentConfig(repitch_probability=repitch) if augment else None,
                description.sources, channels,
                random_crop=True, seed=seed, label_frames=label_frames,
            )  # fmt: skip
            valid_set = MusicStems(
                root, "valid", seconds, rate, None, description.sources, channels,
                random_crop=False, label_frames=label_frames,
            )  # fmt: skip
        else:
            if not (root / "tr").is_dir():
                raise TrainError(f"{root} has no tr/ folder: a speech model needs wsj0-2mix-layout data")
            # Dynamic mixing for speech: speakers of different mixtures, small gain changes,
            # never a dropped speaker (SI-SNR of a silent reference is meaningless).
            speech_augment = AugmentConfig(
                gain_db=(-2.5, 2.5), drop_probability=0.0, remix_probability=0.5, channel_swap_probability=0.0,
                repitch_probability=repitch,
            )  # fmt: skip
            train_set = SpeechMixtures(
                root, "tr", seconds, rate, speech_augment if augment else None, channels, random_crop=True, seed=seed
            )
            valid_set = SpeechMixtures(root, "cv", seconds, rate, None, channels, random_crop=False)
    except DataError as err:
        raise TrainError(str(err)) from err
    return train_set, valid_set


def _spread(count: int, cap: int | None) -> list[int]:
    """``cap`` indices evenly spread over ``range(count)`` (all of them when ``cap`` is None)."""
    if cap is None or cap >= count:
        return list(range(count))
    return sorted({int(i * count / cap) for i in range(cap)})


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str | None) -> tuple[Distributed, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank, world, local), torch.device(f"cuda:{local}" if use_cuda else "cpu")


def _barrier(dist_info: Distributed) -> None:
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()


def _broadcast_float(value: float, dist_info: Distributed, device: torch.device) -> float:
    if not dist_info.enabled:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


# --------------------------------------------------------------------------- state


def _warm_start(model: Separator, path: str) -> None:
    """Copy the weights of checkpoint ``path`` (same preset and config) into ``model``."""
    try:
        source = load_checkpoint(path)
    except (OSError, ValueError) as err:
        raise TrainError(f"--init {path}: {err}") from err
    if not same_weights(source, model):
        raise TrainError(
            f"--init {path} holds {type(source).__name__} {source.config_dict()}; "
            f"build the same model with --model and --config"
        )
    # Settings that leave every weight's shape alone (e.g. joint_stems, dropout) may change.
    changed = {k: v for k, v in model.config_dict().items() if source.config_dict().get(k) != v}
    model.load_state_dict(source.state_dict())
    log.info("weights initialised from %s%s", path, f" (config changed: {changed})" if changed else "")


def _save_state(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(content, tmp)
    tmp.replace(path)  # atomic


def _load_state(path: Path) -> dict[str, Any]:
    content = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(content, dict) or content.get("format") != STATE_FORMAT:
        raise TrainError(f"{path}: not a {STATE_FORMAT} file")
    if content.get("version", 0) > STATE_VERSION:
        raise TrainError(f"{path}: training state version {content['version']} is newer than this code")
    return content


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["channels=[8,16]", "dropout=0.1", "target=vocals"]`` -> config overrides (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TrainError(f"--config expects key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


# --------------------------------------------------------------------------- loop


def train(
    options: TrainOptions,
    on_step: Callable[[int, float], None] | None = None,
    on_update: Callable[[int, nn.Module], None] | None = None,
) -> TrainResult:
    """Train ``options.model`` on ``options.data``; returns the best checkpoint and the loss history.

    ``on_step(step, train_loss)`` and ``on_update(step, model)`` are called after every optimiser
    step (``on_update`` sees the weights just stepped: the DDP test compares them across ranks).
    """
    started = time.monotonic()
    dist_info, device = _init_distributed(options.device)
    torch.set_num_threads(
        options.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    )
    torch.manual_seed(options.seed)
    try:
        model = registry.build(options.model, options.config)
    except (registry.UnknownModelError, TypeError, ValueError) as err:
        raise TrainError(f"cannot build {options.model!r} with {options.config}: {err}") from err
    description = model.describe()
    task = choose_task(model, options.segment)
    train_set: MusicStems | SpeechMixtures
    train_set, valid_full = make_datasets(
        description, task, options.data, options.seed, options.augment, options.repitch
    )
    valid_set = Subset(valid_full, _spread(len(valid_full), options.valid_items))
    if dist_info.main:
        log.info(
            "training %s (%s data, %s loss) on %d examples / epoch",
            options.model,
            task.kind,
            task.objective,
            len(train_set),
        )

    if options.init is not None:
        _warm_start(model, options.init)
    model.to(device)
    plain_objective = TrainingObjective(model, task)
    objective: nn.Module = plain_objective
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    out = Path(options.out)
    state_file = state_path(out)
    step, best_val, best_step = 0, math.inf, 0
    history: list[dict[str, float]] = []
    previous_wall = 0.0
    if options.resume and state_file.is_file():
        state = _load_state(state_file)
        if state["preset"] != options.model or state["config"] != model.config_dict():
            raise TrainError(
                f"{state_file} was written for {state['preset']} {state['config']}; "
                f"resume with the same --model and --config"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best_val, best_step = int(state["step"]), float(state["best_val"]), int(state["best_step"])
        history = list(state["history"])
        previous_wall = float(state["wall_seconds"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        log.info("resumed from %s at step %d", state_file, step)
    elif options.resume:
        log.warning("--resume: no %s yet, starting from step 0", state_file)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    sampler: DistributedSampler[int] = DistributedSampler(
        train_set, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=True, seed=options.seed
    )
    drop_last = len(sampler) >= options.batch
    per_epoch = len(sampler) // options.batch if drop_last else 1
    num_sources = len(description.sources)

    def save_state() -> None:
        _save_state(
            state_file,
            {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "preset": options.model,
                "config": model.config_dict(),
                "step": step,
                "best_val": best_val,
                "best_step": best_step,
                "history": history,
                "wall_seconds": previous_wall + time.monotonic() - started,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
        )

    valid_parts: dict[str, float] = {}  # the multitask objective's validation losses per part

    def validate() -> float:
        core = objective.module if isinstance(objective, nn.parallel.DistributedDataParallel) else objective
        model.eval()
        total, count = 0.0, 0
        parts: dict[str, float] = {}
        loader = DataLoader(valid_set, batch_size=options.batch, num_workers=options.workers)
        with torch.no_grad():
            for mixture, stems, *labels in loader:
                mixture, stems = mixture.to(device), stems.to(device)
                targets: list[torch.Tensor | None] = [None]
                if task.objective == "conditioned":
                    targets = [torch.full((mixture.shape[0],), t, device=device) for t in range(num_sources)]
                for target in targets:
                    loss = core(mixture, stems, None, target, *labels)
                    total += float(loss) * mixture.shape[0]
                    count += mixture.shape[0]
                    for name, value in plain_objective.parts.items():
                        parts[name] = parts.get(name, 0.0) + value * mixture.shape[0]
        model.train()
        valid_parts.clear()
        valid_parts.update({f"val_{name}": value / max(count, 1) for name, value in parts.items()})
        return total / max(count, 1)

    from tqdm import tqdm

    last = options.steps if options.stop_after is None else options.stop_after
    bar = tqdm(total=last, initial=step, unit="step", disable=not (options.progress and dist_info.main))
    model.train()
    train_loss = math.nan
    while step < last:
        epoch, within = divmod(step, per_epoch)
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        indices = list(sampler)[within * options.batch :]
        loader = DataLoader(
            train_set, batch_size=options.batch, sampler=indices, num_workers=options.workers, drop_last=drop_last,
            pin_memory=device.type == "cuda",
        )  # fmt: skip
        for mixture, stems, *labels in loader:  # labels: activity, f0 (multitask models only)
            generator = generator_for(options.seed, step, dist_info.rank)
            frame_offset = target = None
            if description.domain == "spectrogram":
                assert description.hop_length is not None and description.window_samples is not None
                room = (mixture.shape[-1] - description.window_samples) // description.hop_length + 1
                # Drawn for the global batch (DistributedSampler hands rank r its items r, r + world, ...),
                # so N ranks of batch B see the windows one process of batch N * B sees.
                shared = generator_for(options.seed, step, 0) if dist_info.enabled else generator
                every = torch.randint(room, (mixture.shape[0] * dist_info.world,), generator=shared)
                frame_offset = every[dist_info.rank :: dist_info.world]
            if task.objective == "conditioned":
                target = draw_targets(stems, frame_offset, description, generator).to(device)
            mixture = mixture.to(device, non_blocking=True)
            stems = stems.to(device, non_blocking=True)
            loss = objective(mixture, stems, frame_offset, target, *labels)
            if not torch.isfinite(loss):
                raise TrainError(f"loss is {float(loss)} at step {step}; lower --lr or check the data")
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(options, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), options.clip)
            optimizer.step()
            step += 1
            train_loss = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4g}", best=f"{best_val:.4g}")
            if on_step is not None:
                on_step(step, train_loss)
            if on_update is not None:
                on_update(step, model)
            if step % options.valid_every == 0 or step == last:
                val = validate() if dist_info.main else math.nan
                val = _broadcast_float(val, dist_info, device)
                history.append({"step": step, "train_loss": train_loss, "val_loss": val, **valid_parts})
                improved = val < best_val
                if improved:
                    best_val, best_step = val, step
                if dist_info.main:
                    heads = "".join(f", {k} {v:.4g}" for k, v in valid_parts.items())
                    log.info("step %d: train loss %.5g, validation loss %.5g%s", step, train_loss, val, heads)
                    if improved:
                        save_checkpoint(
                            model, out, _metadata(options, step, val, train_loss, device, started, previous_wall)
                        )
                    save_state()
                _barrier(dist_info)
            if step >= last:
                break
    bar.close()
    if dist_info.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()
    wall = previous_wall + time.monotonic() - started
    return TrainResult(out, step, best_step, best_val, history, wall, dist_info.main)


def _metadata(
    options: TrainOptions,
    step: int,
    val: float,
    train_loss: float,
    device: torch.device,
    started: float,
    previous: float,
) -> dict[str, Any]:
    """Checkpoint metadata: primitives only."""
    return {
        "preset": options.model,
        "config_overrides": json.dumps(options.config, sort_keys=True),
        "step": step,
        "val_loss": val,
        "train_loss": train_loss,
        "data": str(Path(options.data).resolve()),
        "seed": options.seed,
        "batch": options.batch,
        "lr": options.lr,
        "lr_schedule": options.lr_schedule,
        "lr_min": options.lr_min,
        "init": options.init or "",
        "command": options.command,
        "wall_seconds": round(previous + time.monotonic() - started, 3),
        "device": str(device),
        "torch": str(torch.__version__),
    }
