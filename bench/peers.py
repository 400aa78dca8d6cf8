"""Item 1: our models vs their reference packages: same architecture, weights, audio and threads.

* Open-Unmix (``models.open_unmix.OpenUnmix``, umxhq size) vs ``openunmix``'s
  ``OpenUnmix``: the network on the magnitude spectrogram of the demo clip.
  The package imports torchaudio on import, which has no build here, so its
  ``model.py`` is loaded on its own (the network needs nothing else).
* Demucs v2 (``models.demucs.Demucs``, the published size) vs
  ``demucs.demucs.Demucs`` built with the v2 options: waveform in, stems out.
* Conv-TasNet: the peers (torchaudio, asteroid) do not install here; not measured.

The peer's random weights are saved once and loaded unchanged into ours (strict),
so both compute the same function. Time: median of interleaved runs (ours, peer,
ours, ...) in this process. Peak memory: each side's first forward pass in a fresh
process, above its resident size before the pass (kernel high-water mark).
Goal: ours <= 1.0x the peer's time. Peers are test / bench oracles only: product
code never imports them.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from stemserve.bench.report import Options, figure, goal_text, on_worker_thread, peak_memory, save_figure, table

ITEM = "peers"
COLUMNS = [
    "model",
    "audio_s",
    "ours_s_per_audio_s",
    "peer_s_per_audio_s",
    "time_ratio",
    "goal_ratio",
    "verdict",
    "ours_mib_per_audio_s",
    "peer_mib_per_audio_s",
    "memory_ratio",
    "max_abs_diff",
]
TITLE = "Ours vs reference packages (same weights, audio, threads)"
GOAL_RATIO = 1.0
DEMUCS_SOURCES = ("drums", "bass", "other", "vocals")
# The package's arguments that make its class compute Demucs v2 (see tests/models/test_demucs_oracle.py).
DEMUCS_V2_OPTIONS: dict[str, Any] = {"gelu": False, "glu": True, "norm_starts": 99, "dconv_mode": 0, "context": 1}
FULL_DEMUCS: dict[str, Any] = {"audio_channels": 2, "channels": 64, "depth": 6, "lstm_layers": 2, "rewrite": True}
TINY_DEMUCS: dict[str, Any] = {"audio_channels": 2, "channels": 4, "depth": 3, "lstm_layers": 2, "rewrite": True}
FULL_UMX: dict[str, Any] = {"nb_bins": 2049, "nb_channels": 2, "hidden_size": 512, "nb_layers": 3, "max_bin": 1487}
TINY_UMX: dict[str, Any] = {"nb_bins": 129, "nb_channels": 2, "hidden_size": 16, "nb_layers": 2, "max_bin": 64}


class PeerMissingError(RuntimeError):
    """The reference package is not installed."""


# ---------------------------------------------------------------------- the peers


def openunmix_module() -> types.ModuleType:
    """``openunmix/model.py`` as a private module, without importing the package (torchaudio)."""
    spec = importlib.util.find_spec("openunmix")
    if spec is None or not spec.submodule_search_locations:
        raise PeerMissingError("openunmix is not installed (pip install openunmix==1.3.0 --no-deps)")
    package = "_bench_openunmix"
    if f"{package}.model" in sys.modules:
        return sys.modules[f"{package}.model"]
    stand_ins = {name: types.ModuleType(name) for name in (package, f"{package}.filtering", f"{package}.transforms")}
    stand_ins[package].__path__ = []
    # Only the package's Separator uses these two names; the network does not.
    stand_ins[f"{package}.filtering"].wiener = None  # type: ignore[attr-defined]
    stand_ins[f"{package}.transforms"].make_filterbanks = None  # type: ignore[attr-defined]
    stand_ins[f"{package}.transforms"].ComplexNorm = None  # type: ignore[attr-defined]
    source = Path(next(iter(spec.submodule_search_locations))) / "model.py"
    file_spec = importlib.util.spec_from_file_location(f"{package}.model", source)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    sys.modules.update(stand_ins)
    sys.modules[f"{package}.model"] = module
    file_spec.loader.exec_module(module)
    return module


def build_pair(kind: str, tiny: bool, state_path: Path | None = None) -> tuple[Any, Any]:
    """``(ours, peer)`` in eval mode with the same weights (the peer's, saved to / read from ``state_path``)."""
    import torch

    torch.manual_seed(0)
    ours: torch.nn.Module
    if kind == "open_unmix":
        from stemserve.models.open_unmix import OpenUnmix, OpenUnmixConfig

        hyper = TINY_UMX if tiny else FULL_UMX
        peer = openunmix_module().OpenUnmix(**hyper, unidirectional=False).eval()
        n_fft = (hyper["nb_bins"] - 1) * 2
        ours = OpenUnmix(
            OpenUnmixConfig(
                nb_bins=hyper["nb_bins"],
                hidden_size=hyper["hidden_size"],
                nb_layers=hyper["nb_layers"],
                max_bin=hyper["max_bin"],
                n_fft=n_fft,
                hop_length=n_fft // 4,
            )
        ).eval()
    elif kind == "demucs":
        try:
            from demucs.demucs import Demucs as PeerDemucs
        except ImportError as err:
            raise PeerMissingError("demucs is not installed (pip install demucs==4.1.0 --no-deps)") from err
        from stemserve.models.demucs import Demucs, DemucsConfig

        size = TINY_DEMUCS if tiny else FULL_DEMUCS
        peer = PeerDemucs(list(DEMUCS_SOURCES), **size, **DEMUCS_V2_OPTIONS, normalize=False, resample=True).eval()
        ours = Demucs(DemucsConfig(sources=DEMUCS_SOURCES, **size, rescale=0.0)).eval()
    else:
        raise ValueError(f"unknown peer kind {kind!r}")
    if state_path is not None and state_path.exists():
        peer.load_state_dict(torch.load(state_path, weights_only=True))
    elif state_path is not None:
        torch.save(peer.state_dict(), state_path)
    ours.load_state_dict(peer.state_dict())  # strict: the same tensors under the same names
    return ours, peer


def make_input(kind: str, tiny: bool, seconds: float) -> Any:
    """The demo clip's first ``seconds``: ``(1, 2, T)`` waveform, or its ``(1, 2, F, K)`` magnitudes."""
    import torch

    from stemserve.bench.audio import demo
    from stemserve.models.stft import magnitude_phase, stft

    wav = torch.from_numpy(demo(44100, 2, seconds))  # (2, T)
    if kind == "demucs":
        return wav[None]
    n_fft = ((TINY_UMX if tiny else FULL_UMX)["nb_bins"] - 1) * 2
    mag, _ = magnitude_phase(stft(wav, n_fft, n_fft // 4))  # (2, F, K)
    return mag[None].contiguous()


def forward(model: Any, x: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(x.clone())  # the Open-Unmix package's forward works in place on a view


def memory_child(kind: str, side: str, tiny: bool, seconds: float, threads: int, state: str) -> int:
    """Run in a fresh process: bytes above resident size during one forward pass of one side."""
    import torch

    torch.set_num_threads(threads)
    ours, peer = build_pair(kind, tiny, Path(state))
    model = ours if side == "ours" else peer
    del ours, peer
    x = make_input(kind, tiny, seconds)
    with peak_memory() as probe:
        forward(model, x)
    return max(0, probe.peak - probe.baseline)


def measure(kind: str, options: Options, seconds: float, repeats: int, state: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(options.threads)
    ours, peer = build_pair(kind, options.tiny, state)
    x = make_input(kind, options.tiny, seconds)
    models: dict[str, Callable[[Any], Any]] = {"ours": ours, "peer": peer}

    def timed() -> tuple[dict[str, list[float]], float]:
        times: dict[str, list[float]] = {"ours": [], "peer": []}
        diff = (forward(ours, x) - forward(peer, x)).abs().max().item()  # same weights: same output
        for side in ("ours", "peer"):  # first calls create oneDNN primitives (seconds for an LSTM)
            forward(models[side], x)
        for _ in range(repeats):  # interleaved: drifting load touches both alike
            for side in ("ours", "peer"):
                start = time.perf_counter()
                forward(models[side], x)
                times[side].append(time.perf_counter() - start)
        return times, diff

    times, diff = on_worker_thread(timed)  # both sides on one fresh thread (see report.on_worker_thread)
    memory = {}
    for side in ("ours", "peer"):
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            memory[side] = pool.submit(
                memory_child, kind, side, options.tiny, seconds, options.threads, str(state)
            ).result()
    t_ours, t_peer = statistics.median(times["ours"]), statistics.median(times["peer"])
    ratio = t_ours / t_peer
    return {
        "model": kind,
        "audio_s": seconds,
        "ours_s_per_audio_s": t_ours / seconds,
        "peer_s_per_audio_s": t_peer / seconds,
        "time_ratio": ratio,
        "goal_ratio": GOAL_RATIO,
        "verdict": goal_text(ratio, GOAL_RATIO),
        "ours_mib_per_audio_s": memory["ours"] / 2**20 / seconds,
        "peer_mib_per_audio_s": memory["peer"] / 2**20 / seconds,
        "memory_ratio": memory["ours"] / memory["peer"] if memory["peer"] else float("nan"),
        "max_abs_diff": diff,
        "runs_ours_s": times["ours"],
        "runs_peer_s": times["peer"],
        "parameters": sum(p.numel() for p in ours.parameters()),
    }


def run(options: Options) -> dict[str, Any]:
    seconds = {"open_unmix": 1.0, "demucs": 1.0} if options.tiny else {"open_unmix": 10.0, "demucs": 5.0}
    seconds.update(options.extra.get("peer_seconds", {}))
    repeats = 2 if options.tiny else int(options.extra.get("repeats", 5))
    rows: list[dict[str, Any]] = []
    missing: dict[str, str] = {"conv_tasnet": "no peer installs here (torchaudio has no CPU build; asteroid absent)"}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("open_unmix", "demucs"):
            try:
                rows.append(measure(kind, options, seconds[kind], repeats, Path(tmp) / f"{kind}.pt"))
            except PeerMissingError as err:
                missing[kind] = str(err)
    print(TITLE)
    print(table(rows, COLUMNS))
    for kind, why in missing.items():
        print(f"{kind}: not measured: {why}")
    fig, axes = figure(1, 2, width=4.2)
    names = [r["model"] for r in rows]
    for ax, (key, label) in zip(
        axes[0],
        (("s_per_audio_s", "compute s per s of audio"), ("mib_per_audio_s", "peak MiB per s of audio")),
        strict=True,
    ):
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r[f"ours_{key}"] for r in rows], 0.4, label="ours")
        ax.bar([x + 0.2 for x in xs], [r[f"peer_{key}"] for r in rows], 0.4, label="peer package")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    save_figure(fig, options.out, ITEM, TITLE)
    return {"title": TITLE, "goal": {"time_ratio": GOAL_RATIO}, "rows": rows, "not_measured": missing}
