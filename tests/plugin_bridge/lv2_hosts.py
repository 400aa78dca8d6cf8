"""The LV2 plugin and the real hosts that load it, for the tests in ``test_lv2*.py``.

* :func:`build_bundle`: configures and builds ``plugin_bridge/lv2`` with CMake into
  ``build/lv2`` (incremental: a no-op when nothing changed; about a minute from scratch on
  two cores) and returns the folder to put on ``LV2_PATH``. The tests build it themselves,
  once per session (the ``lv2_path`` fixture), so ``.ci/run`` needs no extra step.
* :func:`run_lv2file`: renders a WAV through the plugin with Debian's ``lv2file``.
* :func:`reported_latency`: the latency the plugin logged when its session opened.
* :func:`start_jackd` / :func:`stop`: a ``jackd -d dummy`` and process shutdown by id.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.plugin_bridge.servers import ROOT

STEREO = "urn:stemserve:lv2:stereo"
MONO = "urn:stemserve:lv2:mono"
SOURCE = ROOT / "plugin_bridge" / "lv2"
BUILD = ROOT / "build" / "lv2"
HOST_TOOLS = ("cmake", "g++", "protoc", "grpc_cpp_plugin", "lv2file", "jalv", "jackd")


def missing_tools() -> list[str]:
    return [tool for tool in HOST_TOOLS if shutil.which(tool) is None]


def build_bundle(build: Path = BUILD) -> Path:
    """Build the bundle; returns the folder holding ``stemserve.lv2`` (for ``LV2_PATH``)."""
    jobs = str(max(1, min(2, os.cpu_count() or 1)))
    for command in (
        ["cmake", "-S", str(SOURCE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "-j", jobs],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    bundles = build / "bundles"
    if not (bundles / "stemserve.lv2" / "stemserve.so").is_file():
        raise RuntimeError(f"the build left no bundle in {bundles}")
    return bundles


def plugin_env(lv2_path: Path, address: str, model: str, **extra: str) -> dict[str, str]:
    """Environment for a host process: the bundle on LV2_PATH, the plugin's state overridden."""
    env = dict(os.environ, LV2_PATH=str(lv2_path), STEMSERVE_LV2_SERVER=address, STEMSERVE_LV2_MODEL=model)
    env.update(extra)
    return env


LATENCY_LINE = re.compile(r"LATENCY (\d+) frames")


def reported_latency(log: str) -> int:
    """The plugin's fixed latency, as it logged it (once per instance)."""
    found = LATENCY_LINE.findall(log)
    if not found:
        raise AssertionError(f"the plugin logged no latency:\n{log[-3000:]}")
    if len(set(found)) != 1:
        raise AssertionError(f"the plugin's latency changed: {found}")
    return int(found[0])


def run_lv2file(
    lv2_path: Path,
    address: str,
    model: str,
    audio: np.ndarray,
    rate: int,
    workdir: Path,
    block: int,
    controls: dict[str, float],
    plugin: str = STEREO,
) -> tuple[np.ndarray, str]:
    """Render ``audio (channels, frames)`` through the plugin; returns ``(output (channels, frames), log)``."""
    source, rendered = workdir / f"in-{block}.wav", workdir / f"out-{block}.wav"
    sf.write(source, audio.T, rate, subtype="FLOAT")
    command = ["lv2file", "-i", str(source), "-o", str(rendered), "-b", str(block), "--ignore-clipping"]
    for symbol, value in controls.items():
        command += ["-p", f"{symbol}:{value}"]
    done = subprocess.run(
        [*command, plugin], env=plugin_env(lv2_path, address, model), capture_output=True, text=True, timeout=120
    )
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"lv2file failed ({done.returncode}):\n{log[-3000:]}")
    out, out_rate = sf.read(rendered, dtype="float32", always_2d=True)
    assert out_rate == rate
    return out.T.copy(), log


def start_jackd(workdir: Path, rate: int, period: int) -> tuple[subprocess.Popen[bytes], str]:
    """A ``jackd -d dummy`` server with a unique name; returns once clients can connect."""
    name = f"stemserve-lv2-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
    with open(workdir / "jackd.log", "wb") as log:
        jackd = subprocess.Popen(
            ["jackd", "-n", name, "-d", "dummy", "-r", str(rate), "-p", str(period)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe = subprocess.run(["jack_lsp", "-s", name], capture_output=True, text=True, timeout=10, env=env)
        if probe.returncode == 0 and "system" in probe.stdout:
            return jackd, name
        if jackd.poll() is not None:
            break
        time.sleep(0.2)
    stop(jackd)
    raise RuntimeError(f"jackd did not start: {(workdir / 'jackd.log').read_text(errors='replace')[-2000:]}")


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop one process we started, by its id; SIGKILL if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# -- Ardour 7 headless (Debian's ardour: ardour7-lua and ardour7-export) ---------------------------
# Headless Ardour has no import (that is the editor's), so the session gets its audio by recording:
# ARDOUR_CREATE records a take of ARDOUR_TEST_SECONDS on a stereo track with the "None (Dummy)"
# backend; the test then writes its test audio over the take's two mono files (same length, same
# float WAV format), so the track's region is the test audio sample for sample.
ARDOUR_CREATE = """
local dir = os.getenv("ARDOUR_TEST_SESSION")
local seconds = tonumber(os.getenv("ARDOUR_TEST_SECONDS"))
AudioEngine:set_backend("None (Dummy)", "", "")
local s = create_session(dir, "t", 48000)
assert(s, "no session")
local order = ARDOUR.PresentationInfo.max_order
local tracks = s:new_audio_track(2, 2, nil, 1, "track", order, ARDOUR.TrackMode.Normal, true)
local track = tracks:front()
track:rec_enable_control():set_value(1, PBD.GroupControlDisposition.NoGroup)
s:maybe_enable_record(false)
s:request_roll(ARDOUR.TransportRequestSource.TRS_UI)
ARDOUR.LuaAPI.usleep(math.floor(seconds * 1000000))
s:request_stop(false, false, ARDOUR.TransportRequestSource.TRS_UI)
ARDOUR.LuaAPI.usleep(500000)
print("REGIONS " .. track:playlist():region_list():size())
s:save_state("", false, false, false, false, false)
close_session()
"""

# Inserts the plugin first on the track and sets `target` (control 0), then saves the session.
# ARDOUR_TEST_REGION_AT (frames): the region moves there and the session range (what
# ardour7-export exports) becomes [0, region end]: the lead-in a real song has before its first sound.
# ARDOUR_TEST_AUTOMATION ("frame:value ..."): points of `target` automation, played back (Play).
ARDOUR_INSERT = """
local dir = os.getenv("ARDOUR_TEST_SESSION")
local target = tonumber(os.getenv("ARDOUR_TEST_TARGET"))
local at = tonumber(os.getenv("ARDOUR_TEST_REGION_AT") or "0")
local points = os.getenv("ARDOUR_TEST_AUTOMATION") or ""
AudioEngine:set_backend("None (Dummy)", "", "")
local s = load_session(dir, "t")
assert(s, "cannot load the session")
local track = s:route_by_name("track")
assert(not track:isnil(), "no track")
local region = nil
for r in track:to_track():playlist():region_list():iter() do region = r end
assert(region, "no region")
if at > 0 then
  region:set_position(Temporal.timepos_t(at))
  local range = s:locations():session_range_location()
  assert(range:set(Temporal.timepos_t(0), Temporal.timepos_t(at + region:length():samples())) == 0, "range")
end
local p = ARDOUR.LuaAPI.new_plugin(s, "urn:stemserve:lv2:stereo", ARDOUR.PluginType.LV2, "")
assert(not p:isnil(), "the plugin did not load")
assert(track:add_processor_by_index(p, 0, nil, true) == 0, "cannot insert the plugin")
assert(ARDOUR.LuaAPI.set_processor_param(p, 0, target), "cannot set target")
if points ~= "" then
  local al, cl, _ = ARDOUR.LuaAPI.plugin_automation(p, 0)
  assert(not al:isnil(), "target is not automatable")
  -- A new list interpolates linearly, even for an integer enumeration: a step is what `target` means.
  assert(cl:set_interpolation(Evoral.InterpolationStyle.Discrete), "interpolation")
  for frame, value in string.gmatch(points, "(%d+):(%d+)") do
    cl:add(Temporal.timepos_t(tonumber(frame)), tonumber(value), false, false)
  end
  -- The control's parameter id is the LV2 port index: `target` is port 4 (after 2 in, 2 out).
  local parameter = Evoral.Parameter(ARDOUR.AutomationType.PluginAutomation, 0, 4)
  local control = p:to_insert():to_automatable():automation_control(parameter, false)
  assert(not control:isnil(), "no automation control for target")
  control:set_automation_state(ARDOUR.AutoState.Play)
  print("AUTOMATION " .. cl:size() .. " points")
end
print("REGION " .. region:position():samples() .. " " .. region:length():samples())
print("TARGET " .. ARDOUR.LuaAPI.get_processor_param(p, 0, true))
s:save_state("", false, false, false, false, false)
close_session()
"""


def ardour_lua(script: str, workdir: Path, env: dict[str, str], name: str, marker: str) -> str:
    """Run a Lua script with ``ardour7-lua``; returns its output. The script's last step prints
    ``marker``: without it (a failed assert, a crash) this raises with the output."""
    path = workdir / f"{name}.lua"
    path.write_text(script)
    done = subprocess.run(["ardour7-lua", str(path)], env=env, capture_output=True, text=True, timeout=180)
    out = done.stdout + done.stderr
    if done.returncode != 0 or marker not in out:
        raise AssertionError(f"ardour7-lua {name} failed ({done.returncode}):\n{out[-3000:]}")
    return out


def ardour_take_files(session: Path) -> list[Path]:
    """The recorded take's mono files, left then right."""
    files = sorted((session / "interchange").glob("*/audiofiles/*.wav"))
    left = [f for f in files if "%L" in f.name]
    right = [f for f in files if "%R" in f.name]
    if len(left) != 1 or len(right) != 1:
        raise AssertionError(f"expected one stereo take, found {files}")
    return [left[0], right[0]]
