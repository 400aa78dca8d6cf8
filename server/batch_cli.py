"""``stemserve batch DIR --out OUT``: separate a folder of audio files (a catalogue) with Ray.

::

    pip install -e '.[batch]'
    stemserve batch music/ --out stems/                       # a local Ray instance for the job
    stemserve batch /mnt/catalogue --out /mnt/stems --address auto --device cuda   # an existing cluster

Files (``.wav .flac .ogg .mp3 .aif .aiff``, recursive; whatever soundfile reads) are
streamed through model-holding Ray actors: one per GPU of the cluster with ``--device cuda``
(or ``auto``, the default, when it has GPUs), ``--actors`` on CPU. Each actor holds an
embedded server, so a file takes exactly the path of ``stemserve separate FILE`` and its
stems are the same. ``<OUT>/<relative path>/<stem>.<ext>`` holds the stems of
``<DIR>/<relative path>`` (in the input's format).

Resumable: each finished file leaves a record in ``<OUT>/.batch/`` keyed by its relative
path, the sha256 of its bytes and the model (name + sha256 of its weights + stems), so a
second run skips it; a file that could not be read is recorded the same way and not tried
again until its bytes change. The summary (files, hours of audio, failures with reasons)
is printed and written to ``<OUT>/batch-summary.json``. On a cluster, DIR and OUT must be
paths every node sees (shared storage).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")
RECORDS = ".batch"
SUMMARY = "batch-summary.json"
# Files each actor has queued beyond the one it works on: enough to hide the hand-over,
# few enough that a cluster's actors share the tail of the catalogue.
QUEUED_PER_ACTOR = 1


class BatchError(ValueError):
    """A batch that cannot start (bad folder, unknown model, Ray missing)."""


def configure(parser: argparse.ArgumentParser) -> None:
    from stemserve.server.serve_cli import add_engine_arguments

    parser.add_argument("folder", type=Path, help="folder of audio files (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (stems, records, summary)")
    parser.add_argument("--stems", default="", help="comma-separated stems to write (default: all)")
    parser.add_argument(
        "--address", default=None,
        help="Ray cluster to join (`auto`, or host:port of its head); default: a local Ray instance for this job",
    )  # fmt: skip
    parser.add_argument("--actors", type=int, default=1, help="model-holding actors on CPU (default 1)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--ray-temp-dir", default=None, help="temp folder of the local Ray instance")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_arguments(parser)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Job:
    """One input file: where it is, where its stems go, and the record that says it is done."""

    source: str
    relative: str
    out_dir: str
    record: str


@dataclass
class Outcome:
    relative: str
    ok: bool
    seconds: float = 0.0  # of audio
    reason: str = ""
    stems: list[str] = field(default_factory=list)
    file_fault: bool = False  # the file itself is bad (unreadable, empty): not worth retrying unchanged


def find_audio(folder: Path) -> list[Path]:
    """Every audio file under ``folder`` (by suffix, case-insensitive), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_key(name: str, path: str | None, stems: list[str]) -> str:
    """What makes two runs' stems the same: the model's name, its weights' bytes and the stems asked for."""
    digest = hashlib.sha256(json.dumps([name, stems]).encode())
    if path is not None:
        weights = Path(path)
        files = sorted(p for p in weights.rglob("*") if p.is_file()) if weights.is_dir() else [weights]
        for f in files:
            digest.update(sha256_of(f).encode())
    return digest.hexdigest()


def plan(folder: Path, out: Path, key: str) -> tuple[list[Job], list[tuple[Path, dict[str, Any]]]]:
    """(files to separate, (file, its record) already done or known bad)."""
    todo: list[Job] = []
    done: list[tuple[Path, dict[str, Any]]] = []
    records = out / RECORDS
    inside = out.resolve()
    for path in find_audio(folder):
        if path.resolve().is_relative_to(inside):
            continue  # OUT inside DIR: stems are not inputs
        relative = path.relative_to(folder).as_posix()
        name = hashlib.sha256(f"{relative}\0{sha256_of(path)}\0{key}".encode()).hexdigest()
        record = records / f"{name}.json"
        if record.is_file():
            content = json.loads(record.read_text())
            if not content["ok"] or all((out / relative / s).is_file() for s in content["stems"]):
                done.append((path, content))
                continue
        todo.append(Job(str(path), relative, str(out / relative), str(record)))
    return todo, done


# --------------------------------------------------------------------------- the actor


class FileSeparator:
    """Holds one model on one device (an embedded server) and separates files with it.

    Built inside a Ray actor: ``engine_args`` are ``stemserve batch``'s engine arguments.
    """

    def __init__(self, engine_args: argparse.Namespace, model: str, models: dict[str, str | None]) -> None:
        from stemserve.plugin_bridge.client import StemClient
        from stemserve.server.embedded import EmbeddedServer
        from stemserve.server.serve_cli import build_engine, load_untrained

        engine = build_engine(engine_args)
        self.server = EmbeddedServer(engine, load_untrained(engine, dict(models)))
        self.client = StemClient(self.server.start())
        self.model = model

    def separate(self, job: Job, stems: list[str]) -> Outcome:
        """Separate ``job.source`` into ``job.out_dir``; every failure comes back as an Outcome."""
        import soundfile as sf

        from stemserve.plugin_bridge.client import StemServeError

        try:
            info = sf.info(job.source)
        except (OSError, sf.SoundFileError, RuntimeError) as err:
            return Outcome(job.relative, False, reason=f"unreadable: {err}", file_fault=True)
        if info.frames == 0:
            return Outcome(job.relative, False, reason="empty: no audio frames", file_fault=True)
        try:
            written = self.client.separate_file(job.source, job.out_dir, self.model, stems)
        except (OSError, sf.SoundFileError, RuntimeError) as err:  # StemServeError is a RuntimeError
            fault = isinstance(err, StemServeError) and err.code == "INVALID_ARGUMENT"
            reason = f"{err.code}: {err.message}" if isinstance(err, StemServeError) else f"{type(err).__name__}: {err}"
            return Outcome(job.relative, False, reason=reason, file_fault=fault)
        seconds = info.frames / info.samplerate
        return Outcome(job.relative, True, seconds, stems=sorted(p.name for p in written.values()))

    def close(self) -> None:
        self.client.close()
        self.server.stop()


# --------------------------------------------------------------------------- the driver


def _ray_init(args: argparse.Namespace) -> Any:
    try:
        import ray
    except ImportError as err:
        raise BatchError("Ray is not installed: pip install 'stemserve[batch]'") from err
    # No usage reporting from a tool that may run where nothing should leave the machine.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=args.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=args.ray_temp_dir,
        )
    return ray


def _actors(ray: Any, args: argparse.Namespace, model: str, models: dict[str, str | None]) -> list[Any]:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if args.device.startswith("cuda") or (args.device == "auto" and gpus > 0):
        if gpus < 1:
            raise BatchError("--device cuda: the Ray cluster has no GPU")
        count, options = gpus, {"num_gpus": 1, "num_cpus": 1}
        args = argparse.Namespace(**{**vars(args), "device": "cuda"})  # each actor sees its one GPU as cuda:0
    else:
        count, options = args.actors, {"num_cpus": 1}
        # One torch thread per actor CPU (the engine's default is every core but one).
        args = argparse.Namespace(**{**vars(args), "threads": args.threads or 1})
    remote = ray.remote(**options)(FileSeparator)
    return [remote.remote(args, model, models) for _ in range(count)]


def _stream(ray: Any, actors: list[Any], jobs: list[Job], stems: list[str]) -> Iterator[tuple[Job, Outcome]]:
    """Feed ``jobs`` to ``actors`` (one working + QUEUED_PER_ACTOR queued each); yield outcomes as they come."""
    pending = iter(jobs)
    running: dict[Any, tuple[Job, int]] = {}

    def submit(index: int) -> bool:
        job = next(pending, None)
        if job is None:
            return False
        running[actors[index].separate.remote(job, stems)] = (job, index)
        return True

    for index in range(len(actors)):
        for _ in range(1 + QUEUED_PER_ACTOR):
            submit(index)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        job, index = running.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except ray.exceptions.RayError as err:  # the actor died (out of memory...): this file failed
            outcome = Outcome(job.relative, False, reason=f"worker failed: {type(err).__name__}: {err}")
        yield job, outcome
        submit(index)


def _record(job: Job, outcome: Outcome) -> None:
    if not (outcome.ok or outcome.file_fault):
        return  # a transient failure: try again next run
    record = Path(job.record)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps({**asdict(outcome), "source": job.source}))
    tmp.replace(record)


@dataclass
class Summary:
    files: int = 0
    separated: int = 0
    already_done: int = 0
    failed: int = 0
    audio_hours: float = 0.0  # separated by this run
    actors: int = 0  # model-holding actors started (0: nothing to do, Ray not started)
    wall_seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # relative path -> reason

    def lines(self) -> list[str]:
        out = [
            f"stemserve batch: {self.files} files: {self.separated} separated ({self.audio_hours:.3f} h of audio), "
            f"{self.already_done} already done, {self.failed} failed, in {self.wall_seconds:.1f} s"
        ]
        out += [f"  failed: {name}: {reason}" for name, reason in sorted(self.failures.items())]
        return out


def run_batch(args: argparse.Namespace) -> Summary:
    from tqdm import tqdm

    from stemserve.server.engine.pool import bundled_models
    from stemserve.server.serve_cli import default_models, parse_models

    started = time.monotonic()
    folder: Path = args.folder
    if not folder.is_dir():
        raise BatchError(f"{folder}: not a folder")
    if args.actors < 1:
        raise BatchError("--actors must be >= 1")
    stems = [s.strip() for s in args.stems.split(",") if s.strip()]
    models = parse_models(args.model) or dict(list(default_models().items())[:1])
    if len(models) != 1:
        raise BatchError("stemserve batch separates with one model: give --model once")
    model, weights = next(iter(models.items()))
    if weights is None:
        weights = bundled_models().get(model)  # a bundled name: its weights file decides the key
    todo, done = plan(folder, args.out, model_key(model, weights, stems))
    summary = Summary(files=len(todo) + len(done))
    for path, content in done:
        if content["ok"]:
            summary.already_done += 1
        else:
            summary.failed += 1
            summary.failures[path.relative_to(folder).as_posix()] = f"{content['reason']} (unchanged since)"
    if todo:
        ray = _ray_init(args)
        try:
            actors = _actors(ray, args, model, models)
            summary.actors = len(actors)
            bar = tqdm(total=len(todo), unit="file", desc=f"batch [{model}]", disable=args.no_progress)
            for job, outcome in _stream(ray, actors, todo, stems):
                _record(job, outcome)
                if outcome.ok:
                    summary.separated += 1
                    summary.audio_hours += outcome.seconds / 3600.0
                else:
                    summary.failed += 1
                    summary.failures[job.relative] = outcome.reason
                bar.update(1)
                bar.set_postfix(hours=f"{summary.audio_hours:.3f}", failed=summary.failed)
            bar.close()
            ray.get([actor.close.remote() for actor in actors])
        finally:
            ray.shutdown()
    summary.wall_seconds = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / SUMMARY).write_text(json.dumps(asdict(summary), indent=1) + "\n")
    return summary


def run(args: argparse.Namespace) -> int:
    try:
        summary = run_batch(args)
    except BatchError as err:
        print(f"stemserve batch: {err}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return 1 if summary.failed else 0
