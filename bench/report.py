"""Shared by every benchmark: options, the machine, timing and memory probes, JSON / PNG / table output."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_OUT = Path("bench-results")
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """What every item takes from the command line.

    Attributes:
        tiny: seconds-long settings with tiny model configs (CI checks the items run).
        out: folder for ``<item>.json`` and ``<item>.png``.
        threads: torch intra-op threads, the same for ours, peers and the server.
        device: ``cpu`` (``cuda`` for the GPU items, where one exists).
        duration: seconds each live-capacity trial runs (None: the item's default).
        max_length: longest file in the growth item, seconds (None: the item's default).
        models: models to measure where an item takes several (empty: the item's default).
    """

    tiny: bool = False
    out: Path = DEFAULT_OUT
    threads: int = 2
    device: str = "cpu"
    duration: float | None = None
    max_length: float | None = None
    models: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (math.nan, math.nan, math.nan)


def machine() -> dict[str, Any]:
    """The machine a result was measured on (goes into every JSON)."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in load_average()],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---------------------------------------------------------------------- timing


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max / mean of durations in seconds, as milliseconds."""
    ms = [s * 1e3 for s in seconds]
    return {
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else math.nan,
        "mean": statistics.fmean(ms) if ms else math.nan,
        "count": len(ms),
    }


def best_of(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """``(median seconds, all runs)`` of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs


def on_worker_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a fresh thread, as the engine runs models on its per-model worker thread.

    Model-call timings that stand for the engine's are taken this way so that
    both sides of a comparison run under the same threading conditions.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed back to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="bench-worker")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


# ---------------------------------------------------------------------- memory


def _status_kib(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int | str = "self") -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of ``pid``; False where Linux refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_bytes(pid: int | str = "self") -> int:
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int | str = "self") -> int:
    return _status_kib(pid, "VmHWM") * 1024


class PeakMemory:
    """Peak resident memory of a process above its level at :meth:`start`, in bytes.

    Uses the kernel's high-water mark after resetting it (exact); where the reset
    is refused, a thread samples VmRSS every millisecond (misses spikes shorter
    than that). CPU memory only; on CUDA use ``torch.cuda.max_memory_allocated``.
    """

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid
        self.baseline = 0
        self.peak = 0
        self.method = "VmHWM"
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self) -> PeakMemory:
        self.baseline = rss_bytes(self.pid)
        if not reset_peak(self.pid):
            self.method = "sampled VmRSS"
            self.peak = self.baseline
            self._stop.clear()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        """Bytes above the baseline at the peak."""
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
        else:
            self.peak = peak_rss_bytes(self.pid)
        return max(0, self.peak - self.baseline)


@contextmanager
def peak_memory(pid: int | str = "self") -> Iterator[PeakMemory]:
    probe = PeakMemory(pid).start()
    try:
        yield probe
    finally:
        probe.stop()


# ---------------------------------------------------------------------- output


def goal_text(value: float, goal: float | None, better: str = "lower") -> str:
    """``"met"`` / ``"MISSED"`` / ``""`` for a value against its goal."""
    if goal is None or value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    ok = value <= goal if better == "lower" else value >= goal
    return "met" if ok else "MISSED"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 10 ** -(digits - 1)):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(1, digits - 1)}f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text (and Markdown) table of ``rows``."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join([line, rule, *body])


def _clean(value: Any) -> Any:
    """JSON has no NaN / Inf: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(out: Path, item: str, result: dict[str, Any], options: Options) -> Path:
    """``<out>/<item>.json`` with the result, the machine and the settings."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{item}.json"
    settings = {k: v for k, v in vars(options).items() if k != "extra"}
    document = {"item": item, "machine": machine(), "settings": settings, **result}
    path.write_text(json.dumps(_clean(document), indent=2, default=str) + "\n")
    return path


def figure(rows: int = 1, cols: int = 1, width: float = 6.4, height: float = 4.0) -> tuple[Any, Any]:
    """A matplotlib figure on the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)


def save_figure(fig: Any, out: Path, item: str, title: str) -> Path:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{item}.png"
    load = load_average()[0]
    fig.suptitle(f"{title}\n{cpu_model()}, {os.cpu_count()} cores, load {load:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
