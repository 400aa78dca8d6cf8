"""``stemserve data``: render training / evaluation data.

::

    stemserve data music  --out data/music  --tracks 200 --seconds 10 --seed 0 [--valid 20 --test 20 --workers 2]
                          [--soundfonts train --timing-ms 8 --velocity-spread 8 --effects --loudness-db 4]
    stemserve data speech --out data/speech --mixtures 2000 --seconds 4 --seed 0 [--rate 8000]
                          [--engines espeak-ng,flite --voices slt,awb]

Both are deterministic: the same arguments write byte-identical files, and a
track / mixture already on disk with the same settings is skipped, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    m = sub.add_parser("music", help="procedural songs rendered per stem with FluidSynth (MUSDB layout)")
    m.add_argument("--out", required=True, help="output folder (train/, valid/, test/ inside)")
    m.add_argument("--tracks", type=int, required=True, help="training tracks")
    m.add_argument("--seconds", type=float, default=10.0, help="track length (default 10)")
    m.add_argument("--seed", type=int, default=0, help="base seed; every split's tracks get their own seeds")
    m.add_argument("--valid", type=int, default=None, help="validation tracks (default: tracks / 10, at least 1)")
    m.add_argument("--test", type=int, default=None, help="test tracks (default: tracks / 10, at least 1)")
    m.add_argument("--workers", type=int, default=None, help="FluidSynth processes at a time (default: CPU count)")
    m.add_argument("--rate", type=int, default=44100, help="sample rate (default 44100)")
    m.add_argument("--subtype", default="FLOAT", choices=("FLOAT", "PCM_16", "PCM_24"), help="wav sample format")
    m.add_argument("--soundfont", default=None, help="GM soundfont (default: $STEMSERVE_SOUNDFONT or FluidR3_GM)")
    m.add_argument(
        "--soundfonts",
        default=None,
        help="comma-separated pool each stem draws its soundfont from (names of models.data.variety.GM_SOUNDFONTS "
        "or paths; 'train' = the training pool, which leaves out the held-out TimGM6mb)",
    )
    m.add_argument("--timing-ms", type=float, default=0.0, help="onset humanisation, std in ms (default 0)")
    m.add_argument("--velocity-spread", type=float, default=0.0, help="velocity humanisation, std (default 0)")
    m.add_argument("--effects", action="store_true", help="a random SoX chain per stem: EQ, shelf, compressor, reverb")
    m.add_argument("--loudness-db", type=float, default=0.0, help="per-stem gain uniform in +-this (default 0)")

    s = sub.add_parser("speech", help="two-speaker espeak-ng / flite mixtures (wsj0-2mix layout)")
    s.add_argument("--out", required=True, help="output folder (tr/, cv/, tt/ inside)")
    s.add_argument("--mixtures", type=int, required=True, help="training mixtures")
    s.add_argument("--seconds", type=float, default=4.0, help="mixture length (default 4)")
    s.add_argument("--seed", type=int, default=0, help="base seed; every split's mixtures get their own seeds")
    s.add_argument("--valid", type=int, default=None, help="validation mixtures (default: mixtures / 10, at least 1)")
    s.add_argument("--test", type=int, default=None, help="test mixtures (default: mixtures / 10, at least 1)")
    s.add_argument("--rate", type=int, default=8000, choices=(8000, 16000), help="sample rate (default 8000)")
    s.add_argument("--workers", type=int, default=None, help="synthesiser processes at a time (default: CPU count)")
    s.add_argument("--subtype", default="FLOAT", choices=("FLOAT", "PCM_16"), help="wav sample format")
    s.add_argument(
        "--engines",
        default="train",
        help="comma-separated synthesisers each speaker draws from (espeak-ng, flite; 'train' = espeak-ng alone, "
        "what the bundled models were trained on; 'held-out' = flite)",
    )
    s.add_argument(
        "--voices",
        default="",
        help="comma-separated voices to draw from (espeak-ng languages such as en,de; flite voices "
        "kal,awb,rms,slt); default: every voice of the engines",
    )


def _held_out(count: int | None, train: int) -> int:
    return max(1, train // 10) if count is None else count


def _engines(text: str) -> tuple[str, ...]:
    from stemserve.models.data import speech

    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["train"]:
        return speech.TRAIN_ENGINES
    if names == ["held-out"]:
        return (speech.HELD_OUT_ENGINE,)
    return tuple(names)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    workers = args.workers or os.cpu_count() or 1
    if args.kind == "music":
        from stemserve.models.data import music, variety

        counts = {
            "train": args.tracks,
            "valid": _held_out(args.valid, args.tracks),
            "test": _held_out(args.test, args.tracks),
        }
        try:
            pool: tuple[str, ...] = ()
            if args.soundfonts:
                names = [n.strip() for n in args.soundfonts.split(",") if n.strip()]
                pool = tuple(variety.TRAIN_SOUNDFONTS if names == ["train"] else names)
            settings = music.RenderSettings(
                seconds=args.seconds,
                sample_rate=args.rate,
                subtype=args.subtype,
                soundfont=args.soundfont,
                soundfonts=pool,
                timing_ms=args.timing_ms,
                velocity_spread=args.velocity_spread,
                effects=args.effects,
                loudness_db=args.loudness_db,
            )
            with tqdm(total=sum(counts.values()), unit="track", desc="rendering") as bar:
                music.render_dataset(args.out, counts, args.seed, settings, workers, lambda *_: bar.update())
        except (ValueError, music.RenderError, variety.EffectError) as err:
            print(f"stemserve data music: {err}", file=sys.stderr)
            return 2
        print(f"wrote {counts} tracks of {args.seconds:g} s to {args.out}")
        return 0

    from stemserve.models.data import speech

    counts = {
        "tr": args.mixtures,
        "cv": _held_out(args.valid, args.mixtures),
        "tt": _held_out(args.test, args.mixtures),
    }
    try:
        speech_settings = speech.SpeechSettings(
            seconds=args.seconds,
            sample_rate=args.rate,
            subtype=args.subtype,
            engines=_engines(args.engines),
            voices=tuple(v.strip() for v in args.voices.split(",") if v.strip()),
        )
        with tqdm(total=sum(counts.values()), unit="mix", desc="synthesising") as bar:
            speech.render_dataset(args.out, counts, args.seed, speech_settings, workers, lambda *_: bar.update())
    except (ValueError, speech.SynthesisError) as err:
        print(f"stemserve data speech: {err}", file=sys.stderr)
        return 2
    print(f"wrote {counts} mixtures of {args.seconds:g} s at {args.rate} Hz to {args.out}")
    return 0
