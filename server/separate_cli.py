"""``stemserve separate [FILE ...]``: stems of files via a server, or an embedded one.

Without ``--server`` an embedded server starts in-process on an ephemeral
loopback port and the files go through the very same gRPC path. Each input
is written as ``OUT/<model>/<track>/<stem>.<ext>`` (``--filename`` changes the
part under ``OUT``), after its whole separation came back, so a refused or
failed job leaves no partial stems.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stemserve.plugin_bridge.client import StemClient

DEFAULT_FILENAME = "{model}/{track}/{stem}.{ext}"
# Output container per --format, and the subtype written when the input's cannot be kept.
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}
DEPTHS = {"int16": "PCM_16", "int24": "PCM_24", "float32": "FLOAT"}


def configure(parser: argparse.ArgumentParser) -> None:
    from stemserve.server.serve_cli import add_engine_arguments

    parser.add_argument(
        "files", type=Path, nargs="*", metavar="FILE", help="audio files to separate (default: the bundled demo clip)"
    )
    parser.add_argument("--server", default=None, help="host:port of a running server (default: embedded)")
    parser.add_argument("--token", default=os.environ.get("STEMSERVE_TOKEN"), help="bearer token for --server")
    parser.add_argument("--stems", default="", help="comma-separated stems to write (default: all)")
    parser.add_argument(
        "--two-stems", default=None, metavar="STEM",
        help="write STEM and no_STEM, the sum of the model's other stems (e.g. vocals and no_vocals)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--out", type=Path, default=Path("separated"), help="output folder (default: ./separated)"
    )  # fmt: skip
    parser.add_argument(
        "--filename", default=DEFAULT_FILENAME,
        help="path of each stem under --out, from {model}, {track} (input name without extension), {stem}, "
        f"{{ext}} (default: {DEFAULT_FILENAME})",
    )  # fmt: skip
    parser.add_argument(
        "--format", choices=tuple(FORMATS), default=None, help="output format (default: the input's format)"
    )  # fmt: skip
    depth = parser.add_mutually_exclusive_group()
    for name in DEPTHS:
        depth.add_argument(
            f"--{name}", dest="depth", action="store_const", const=name,
            help=f"write {name} samples (default: the input's sample format where the output format has it)",
        )  # fmt: skip
    parser.add_argument(
        "--clip", choices=("rescale", "clamp", "none"), default="rescale",
        help="when a stem peaks above full scale: scale all stems of the track down together (default), "
        "clamp the samples over it, or leave them; any action is reported",
    )  # fmt: skip
    whole = parser.add_argument_group(
        "whole-file options", "models separated whole-file (official Demucs / Open-Unmix files), named as the "
        "demucs and umx commands name them; unset: the package API's default (apply_model, Separator); "
        "another model refuses them (exit 2)",
    )  # fmt: skip
    whole.add_argument(
        "--shifts", type=non_negative(int), default=None, metavar="N",
        help="Demucs: passes on randomly delayed copies, averaged (default 1; 0: one pass, no delay)",
    )  # fmt: skip
    split = whole.add_mutually_exclusive_group()
    split.add_argument(
        "--no-split", dest="split", action="store_false", default=None,
        help="Demucs: the whole file in one pass instead of cross-faded segments (memory grows with the file)",
    )  # fmt: skip
    split.add_argument("--split", dest="split", action="store_true", help="Demucs: segments (the default)")
    whole.add_argument(
        "--overlap", type=float, default=None, metavar="F",
        help="Demucs: fraction of a segment shared with the next, in [0, 1) (default 0.25)",
    )  # fmt: skip
    whole.add_argument(
        "--segment", type=non_negative(float), default=None, metavar="S",
        help="Demucs: seconds per segment (default: the model's own)",
    )  # fmt: skip
    whole.add_argument(
        "--niter", type=non_negative(int), default=None, metavar="N",
        help="Open-Unmix: Wiener post-filter iterations (default 0 as openunmix.Separator; the umx command uses 1)",
    )  # fmt: skip
    whole.add_argument(
        "--residual", action="store_true", default=None,
        help="Open-Unmix: also write a 'residual' stem, the mixture minus the other estimates",
    )  # fmt: skip
    parser.add_argument(
        "--wait", type=float, default=300.0,
        help="seconds to wait for a server that answers but is still warming up (health NOT_SERVING); "
        "nothing listening at --server fails within 3 s",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=int, default=5,
        help="times to start the file again after UNAVAILABLE (a server draining or warming up: behind a "
        "proxy another server takes it), with backoff (default 5)",
    )  # fmt: skip
    add_engine_arguments(parser)


def non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: ``kind(text)``, refused below 0."""

    def parse(text: str) -> float:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


# The whole-file flags and the SeparateStart fields they set.
OPTION_FIELDS = {
    "shifts": "shifts",
    "split": "split",
    "overlap": "overlap",
    "segment": "segment_seconds",
    "niter": "niter",
    "residual": "residual",
}


def start_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SeparateStart whole-file fields the flags set (unset flags are left out)."""
    values = {field: getattr(args, flag) for flag, field in OPTION_FIELDS.items()}
    return {field: value for field, value in values.items() if value is not None}


@dataclass(frozen=True)
class Output:
    """How stems are written: ``fmt``/``subtype`` as soundfile names them, ``ext`` without a dot."""

    fmt: str
    subtype: str
    ext: str


def output_for(path: Path, args: argparse.Namespace) -> Output:
    """The format, sample type and extension of ``path``'s stems; ValueError if they cannot be written."""
    import soundfile as sf

    info = sf.info(str(path))
    if args.format is None:
        fmt, ext, fallback = info.format, path.suffix.lstrip("."), info.subtype  # the extension as given
    else:
        (fmt, fallback), ext = FORMATS[args.format], args.format
    if fmt not in sf.available_formats():
        raise ValueError(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}")
    if args.depth is not None:
        subtype = DEPTHS[args.depth]
        if fmt == "MP3":
            raise ValueError(f"--{args.depth}: MP3 has no sample format to choose")
        if not sf.check_format(fmt, subtype):
            raise ValueError(f"--{args.depth}: {fmt} cannot hold {subtype} samples")
    elif sf.check_format(fmt, info.subtype):
        subtype = info.subtype
    else:
        subtype = fallback
    return Output(fmt, subtype, ext)


def two_stems(stems: dict[str, np.ndarray], target: str) -> dict[str, np.ndarray]:
    """``{target, no_<target>}``: the target estimate and the sum of every other one, ``(channels, n)``."""
    if target not in stems:
        raise ValueError(f"--two-stems {target}: the model's stems are {', '.join(stems)}")
    rest = [audio for name, audio in stems.items() if name != target]
    return {target: stems[target], f"no_{target}": np.sum(rest, axis=0)}


def protect(stems: dict[str, np.ndarray], mode: str) -> str | None:
    """Keep ``stems`` within full scale in place; return what was done, or None if nothing was needed."""
    peak = max((float(np.abs(a).max(initial=0.0)) for a in stems.values()), default=0.0)
    if peak <= 1.0:
        return None
    if mode == "rescale":
        # One gain for every stem, so they still sum to the mix (scaled); a little headroom
        # keeps the integer rounding from touching full scale.
        gain = 1.0 / (1.01 * peak)
        for audio in stems.values():
            audio *= gain
        return f"peak {peak:.3f} over full scale: every stem scaled by {gain:.3f} (--clip rescale)"
    if mode == "clamp":
        over = sum(int((np.abs(a) > 1.0).sum()) for a in stems.values())
        for audio in stems.values():
            np.clip(audio, -1.0, 1.0, out=audio)
        return f"peak {peak:.3f} over full scale: {over} samples clamped (--clip clamp)"
    return f"peak {peak:.3f} over full scale, left as is (--clip none)"


def stem_path(args: argparse.Namespace, model: str, track: str, stem: str, ext: str) -> Path:
    try:
        relative = args.filename.format(model=model, track=track, stem=stem, ext=ext)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"--filename {args.filename!r}: {err!r}; use {{model}} {{track}} {{stem}} {{ext}}") from None
    return args.out / relative


def write_stems(stems: dict[str, np.ndarray], paths: dict[str, Path], rate: int, out: Output) -> None:
    """Write every ``(channels, n)`` stem; on failure remove what this call wrote and the folders it made."""
    import soundfile as sf

    made: list[Path] = []
    done: list[Path] = []
    try:
        for name, audio in stems.items():
            folder = paths[name].parent
            made += [p for p in (folder, *folder.parents) if not p.exists()][::-1]
            folder.mkdir(parents=True, exist_ok=True)
            done.append(paths[name])
            sf.write(str(paths[name]), audio.T, rate, subtype=out.subtype, format=out.fmt)
    except BaseException:
        for p in done:
            p.unlink(missing_ok=True)
        for folder in reversed(made):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def run(args: argparse.Namespace) -> int:
    import soundfile as sf

    from stemserve.plugin_bridge.client import StemClient, StemServeError

    paths: list[Path] = args.files or [demo_clip()]
    for path in paths:
        if not path.is_file():
            print(f"stemserve separate: {path}: no such file", file=sys.stderr)
            return 2
    stems = [s.strip() for s in args.stems.split(",") if s.strip()]
    if args.two_stems and stems:
        print("stemserve separate: --two-stems and --stems exclude each other", file=sys.stderr)
        return 2
    try:
        outputs = {path: output_for(path, args) for path in paths}
    except (ValueError, sf.SoundFileError) as err:
        print(f"stemserve separate: {err}", file=sys.stderr)
        return 2
    embedded = None
    address = args.server
    if address is None:
        from stemserve.models.checkpoint import CheckpointError
        from stemserve.server.embedded import EmbeddedServer
        from stemserve.server.serve_cli import (
            build_engine,
            check_models,
            default_models,
            load_untrained,
            parse_models,
        )

        try:
            # Without --model only the default (first bundled) model is loaded: the others
            # would cost warm-up time and never be used by these files.
            chosen = check_models(parse_models(args.model), args.allow_untrained)
        except ValueError as err:
            print(f"stemserve separate: {err}", file=sys.stderr)
            return 2
        engine = build_engine(args)
        embedded = EmbeddedServer(engine, load_untrained(engine, chosen or dict(list(default_models().items())[:1])))
        try:
            address = embedded.start()
        except CheckpointError as err:  # one line naming the file, what it holds, what is supported
            print(f"stemserve separate: {err}", file=sys.stderr)
            return 2
    try:
        with StemClient(address, token=args.token if args.server else None) as client:
            client.wait_serving(timeout=args.wait)
            names = [m.name for m in client.list_models()]
            if not names and not args.model:
                raise StemServeError("NOT_FOUND", f"the server at {address} holds no models")
            model = args.model[0].partition("=")[0] if args.model else names[0]
            for path in paths:
                written = separate_one(client, path, model, stems, outputs[path], args)
                for name, out in written.items():
                    print(f"{name}: {out}")
    except StemServeError as err:
        print(f"stemserve separate: {err}", file=sys.stderr)
        # The request itself was refused (unknown model or stem, bad audio): a usage error.
        return 2 if err.code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION") else 1
    except ValueError as err:  # --two-stems naming a stem the model lacks, a bad --filename
        print(f"stemserve separate: {err}", file=sys.stderr)
        return 2
    except (OSError, sf.SoundFileError) as err:  # unreadable input, unwritable output
        print(f"stemserve separate: {err}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def separate_one(
    client: StemClient, path: Path, model: str, stems: list[str], out: Output, args: argparse.Namespace
) -> dict[str, Path]:
    """Separate one file whole, then write its stems; return ``{stem: path}``."""
    import soundfile as sf
    from tqdm import tqdm

    from stemserve.plugin_bridge.client import StemServeError, file_chunks

    info = sf.info(str(path))
    bar = tqdm(total=0, unit="frames", unit_scale=True, desc=f"{path.name} [{model}]")

    def progress(done: int, total: int) -> None:
        bar.total = total or None
        bar.n = done
        bar.refresh()

    parts: dict[str, list[np.ndarray]] = {}
    for attempt in range(args.retries + 1):
        try:
            parts = {}
            for names, chunk in client.separate_chunks(
                file_chunks(path), info.channels, info.samplerate, model, stems, info.frames, progress,
                start_options(args),
            ):  # fmt: skip
                for name, data in zip(names, chunk, strict=True):
                    parts.setdefault(name, []).append(data)
            break
        except StemServeError as err:  # UNAVAILABLE: nothing was kept, the file starts over
            if err.code != "UNAVAILABLE" or attempt == args.retries:
                raise
            delay = min(8.0, 0.5 * 2**attempt)
            print(f"stemserve separate: {err}; retrying in {delay:g} s", file=sys.stderr, flush=True)
            time.sleep(delay)
    bar.close()
    audio = {name: np.concatenate(chunks, axis=1).astype(np.float32) for name, chunks in parts.items()}
    for name, data in audio.items():
        if data.shape[1] != info.frames:
            raise StemServeError(
                "DATA_LOSS", f"stem {name}: {data.shape[1]} frames came back, the input has {info.frames}"
            )
    if args.two_stems:
        audio = two_stems(audio, args.two_stems)
    note = protect(audio, args.clip)
    if note is not None:
        print(f"stemserve separate: {path.name}: {note}", file=sys.stderr)
    paths = {name: stem_path(args, model, path.stem, name, out.ext) for name in audio}
    write_stems(audio, paths, info.samplerate, out)
    return paths


def demo_clip() -> Path:
    return Path(__file__).resolve().parent.parent / "models" / "demo" / "demo.wav"
