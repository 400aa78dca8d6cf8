"""Item ``files``: seconds per second of audio of a file job, ours next to the peer packages.

* The bundled default (conditioned U-Net, all four stems) through
  :meth:`Engine.separate_file <server.engine.engine.Engine.separate_file>` (the path
  ``stemserve separate`` and ``Separate`` take) with the throughput plan and with the
  live plan (``EngineConfig(file_plan="live")``, the plan file jobs used before).
  Goal: the throughput plan <= ``GOAL_REALTIME`` x real time.
* Demucs v2 (the published size, random weights from the ``demucs`` package, written
  in the package's file layout and loaded by path as ``--model demucs=FILE`` loads it):
  ours through ``Engine.separate_file`` vs ``demucs.apply.apply_model`` with the
  ``demucs`` command's defaults (shifts 1, split, overlap 0.25) on the same file.
* Open-Unmix (umxhq size, a folder as the package's training writes it): ours vs
  ``openunmix.Separator`` with its default (``niter=0``) and with ``niter=1`` (the
  ``umx`` command's default; ours gets it as the ``niter`` file option). The package
  imports torchaudio (no build here) only to read audio files: an empty stand-in
  module takes its place while it loads, as in the tests (tests/models/official_peers.py).
  Goal for both: ours <= 1.0x the peer on the same weights.

Audio: the demo clip (looped to ``audio_s``) at the model's rate and channels.
Each side runs once to warm up, then runs are interleaved (ours, peer, ours, ...)
and the median is reported; the machine's load average is recorded with the
result (others share the CPU). Threads: ``--threads`` for both sides alike.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stemserve.bench.audio import demo
from stemserve.bench.report import Options, figure, goal_text, load_average, save_figure, table

ITEM = "files"
COLUMNS = ["model", "side", "audio_s", "seconds", "s_per_audio_s", "ratio", "goal", "verdict"]
TITLE = "File jobs: seconds per second of audio, ours vs the peer packages"
GOAL_REALTIME = 0.25
GOAL_RATIO = 1.0
UMX_TARGETS = ("vocals", "drums", "bass", "other")
# umxhq's shape (stereo 44.1 kHz, n_fft 4096, hop 1024, 16 kHz bandwidth), and a tiny one.
FULL_UMX: dict[str, int] = {"hidden_size": 512, "n_fft": 4096, "n_hop": 1024, "max_bin": 1487}
TINY_UMX: dict[str, int] = {"hidden_size": 16, "n_fft": 512, "n_hop": 128, "max_bin": 100}
# The live plan's chunk (samples) of the Demucs engine: file jobs do not use it, and the
# model's own segment (40 s, the package default) would make the warm-up cost minutes.
LIVE_CHUNK = 44100


def timed(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Each function once to warm up, then ``repeats`` interleaved timed runs."""
    for fn in fns.values():
        fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    return runs


def file_job(
    engine: Any, name: str, audio: Any, rate: int, file_options: dict[str, Any] | None = None
) -> Callable[[], None]:
    def run() -> None:
        chunks = engine.separate_file(name, audio, rate, options=file_options)
        frames = sum(chunk.shape[-1] for _, chunk in chunks)
        if frames != audio.shape[1]:
            raise RuntimeError(f"{name}: {frames} frames came back for {audio.shape[1]}")

    return run


def row(model: str, side: str, seconds: float, runs: list[float], **extra: Any) -> dict[str, Any]:
    t = statistics.median(runs)
    return {"model": model, "side": side, "audio_s": seconds, "seconds": t, "s_per_audio_s": t / seconds, **extra}


def bundled_rows(options: Options, seconds: float, repeats: int) -> list[dict[str, Any]]:
    from stemserve.bench.subjects import subject
    from stemserve.server.engine import Engine, EngineConfig

    s = subject("conditioned_unet", options.tiny)
    fns: dict[str, Callable[[], None]] = {}
    engines = []
    for plan in ("throughput", "live"):
        engine = Engine(EngineConfig(device=options.device, file_plan=plan, realtime_capacity=float("inf")))
        engines.append(engine)
        model = s.build()
        d = model.describe()
        engine.load_model(s.name, model=model)
        fns[plan] = file_job(engine, s.name, demo(d.sample_rate, d.audio_channels, seconds), d.sample_rate)
    try:
        runs = timed(fns, repeats)
    finally:
        for engine in engines:
            engine.shutdown()
    out = []
    for plan in ("throughput", "live"):
        r = row(f"{s.name} ({s.weights})", f"ours, {plan} plan", seconds, runs[plan])
        r["ratio"] = r["seconds"] / statistics.median(runs["live"])
        r["goal"] = f"<= {GOAL_REALTIME}x real time" if plan == "throughput" else "(before)"
        r["verdict"] = goal_text(r["s_per_audio_s"], GOAL_REALTIME) if plan == "throughput" else ""
        out.append(r)
    return out


def compare(
    model: str, seconds: float, runs: dict[str, list[float]], peer_side: str, ours_side: str = "ours"
) -> list[dict[str, Any]]:
    """Two rows: ours (with the ratio to the peer and the verdict) and the peer."""
    ratio = statistics.median(runs["ours"]) / statistics.median(runs["peer"])
    verdict = goal_text(ratio, GOAL_RATIO)
    return [
        row(model, ours_side, seconds, runs["ours"], ratio=ratio, goal=f"<= {GOAL_RATIO}x peer", verdict=verdict),
        row(model, peer_side, seconds, runs["peer"], ratio=1.0, goal="", verdict=""),
    ]


def write_demucs_file(model: Any, path: Path) -> Path:
    """The package's serialised layout (``klass``, ``args``, ``kwargs``, ``state``), as ``demucs.states``
    builds it (without training arguments, which need omegaconf)."""
    import demucs.states
    import torch

    args, kwargs = model._init_args_kwargs
    state = demucs.states.get_state(model, None, half=False)
    torch.save({"klass": model.__class__, "args": args, "kwargs": kwargs, "state": state}, path)
    return path


def demucs_rows(options: Options, seconds: float, repeats: int) -> list[dict[str, Any]]:
    import torch
    from demucs.apply import apply_model

    from stemserve.bench.peers import build_pair
    from stemserve.server.engine import Engine, EngineConfig

    _, peer = build_pair("demucs", options.tiny)  # the package's class, v2 options, its segment (40 s)
    audio = demo(peer.samplerate, peer.audio_channels, seconds)
    engine = Engine(EngineConfig(device=options.device, realtime_capacity=float("inf"), segment=LIVE_CHUNK))
    with tempfile.TemporaryDirectory() as folder:
        engine.load_model("demucs_v2", write_demucs_file(peer, Path(folder) / "demucs.th"))
    wav = torch.from_numpy(audio)[None]

    def package() -> None:
        with torch.inference_mode():
            apply_model(peer, wav, shifts=1, split=True, overlap=0.25, progress=False)

    try:
        runs = timed({"ours": file_job(engine, "demucs_v2", audio, peer.samplerate), "peer": package}, repeats)
    finally:
        engine.shutdown()
    name = "demucs v2 (published size, random weights)" if not options.tiny else "demucs v2 (tiny)"
    return compare(name, seconds, runs, "demucs.apply.apply_model", "ours (Engine.separate_file)")


@contextmanager
def openunmix_package() -> Iterator[types.ModuleType]:
    """``import openunmix`` with an empty torchaudio stand-in (the package reads audio files with it;
    nothing measured here does); both unloaded on exit."""
    had_torchaudio = "torchaudio" in sys.modules
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    try:
        import openunmix
        import openunmix.model
        import openunmix.utils  # load_separator, the package's folder loader (tests use it)

        yield openunmix
    finally:
        for name in [n for n in sys.modules if n == "openunmix" or n.startswith("openunmix.")]:
            del sys.modules[name]
        if not had_torchaudio:
            sys.modules.pop("torchaudio", None)


def umx_folder(umx: types.ModuleType, folder: Path, shape: dict[str, int]) -> dict[str, Any]:
    """Write a model folder as the package's training does (``separator.json``, ``<target>.json``,
    ``<target>.pth``); return the package's networks by target (random weights, 3 LSTM layers)."""
    import torch

    torch.manual_seed(0)
    nets = {}
    for target in UMX_TARGETS:
        net = umx.model.OpenUnmix(
            nb_bins=shape["n_fft"] // 2 + 1, nb_channels=2, hidden_size=shape["hidden_size"], max_bin=shape["max_bin"]
        ).eval()
        torch.save(net.state_dict(), folder / f"{target}.pth")
        args = {"nfft": shape["n_fft"], "nhop": shape["n_hop"], "nb_channels": 2, "hidden_size": shape["hidden_size"]}
        (folder / f"{target}.json").write_text(json.dumps({"args": args}))
        nets[target] = net
    separator = {"targets": list(UMX_TARGETS), "sample_rate": 44100, "nfft": shape["n_fft"], "nhop": shape["n_hop"]}
    (folder / "separator.json").write_text(json.dumps({**separator, "nb_channels": 2}))
    return nets


def open_unmix_rows(options: Options, seconds: float, repeats: int) -> list[dict[str, Any]]:
    import torch

    from stemserve.server.engine import Engine, EngineConfig

    shape = TINY_UMX if options.tiny else FULL_UMX
    audio = demo(44100, 2, seconds)
    wav = torch.from_numpy(audio)[None]
    engine = Engine(EngineConfig(device=options.device, realtime_capacity=float("inf")))
    rows = []
    try:
        with openunmix_package() as umx, tempfile.TemporaryDirectory() as folder:
            nets = umx_folder(umx, Path(folder), shape)
            engine.load_model("umx", folder)
            for niter in (0, 1):
                peer = umx.model.Separator(
                    nets, niter=niter, sample_rate=44100, n_fft=shape["n_fft"], n_hop=shape["n_hop"], nb_channels=2
                ).eval()

                def package(peer: Any = peer) -> None:
                    with torch.inference_mode():
                        peer(wav.clone())

                job = file_job(engine, "umx", audio, 44100, {"niter": niter} if niter else None)
                runs = timed({"ours": job, "peer": package}, repeats)
                name = f"open-unmix ({'umxhq size' if not options.tiny else 'tiny'}, 4 targets), niter {niter}"
                rows += compare(name, seconds, runs, "openunmix.Separator", "ours (Engine.separate_file)")
    finally:
        engine.shutdown()
    return rows


def run(options: Options) -> dict[str, Any]:
    seconds = 1.0 if options.tiny else float(options.extra.get("serving_seconds", 10.0))
    repeats = 1 if options.tiny else int(options.extra.get("repeats", 2))
    load_before = load_average()
    rows = bundled_rows(options, seconds, repeats)
    missing: dict[str, str] = {}
    for peer, rows_of in (("open_unmix", open_unmix_rows), ("demucs", demucs_rows)):
        try:
            rows += rows_of(options, seconds, repeats)
        except ImportError as err:
            missing[peer] = f"the {peer} package does not import: {err}"
    print(TITLE)
    print(table(rows, COLUMNS))
    for name, why in missing.items():
        print(f"not measured: {name}: {why}")
    fig, axes = figure()
    ax = axes[0][0]
    ax.barh([f"{r['model']}\n{r['side']}" for r in rows], [r["s_per_audio_s"] for r in rows])
    ax.axvline(GOAL_REALTIME, color="k", linestyle=":", label=f"{GOAL_REALTIME}x real time")
    ax.set_xlabel("seconds per second of audio")
    ax.tick_params(axis="y", labelsize=6)
    ax.legend(fontsize=7)
    save_figure(fig, options.out, ITEM, TITLE)
    return {
        "title": TITLE,
        "goal": {"realtime": GOAL_REALTIME, "ratio": GOAL_RATIO},
        "rows": rows,
        "not_measured": missing,
        "load_average": {"before": load_before, "after": load_average()},
    }
