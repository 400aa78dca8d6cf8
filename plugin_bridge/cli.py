"""``stemserve bridge``: a DAW track's audio through a stemserve server, in real time.

On Linux with a JACK server running (and the ``jack`` Python package, from
``pip install JACK-Client``) the bridge is a JACK client named ``--name`` with
ports ``in_1..in_C`` / ``out_1..out_C``; route a track through them (Ardour:
a port insert; or ``jack_connect``). Elsewhere it opens a PortAudio
full-duplex device through PyAudio. Sample rate and buffer size follow the
audio server.

It prints the fixed latency to compensate (also published to JACK's latency
API and sent by OSC with ``--osc-notify``), takes parameters over OSC with
``--osc-port`` (see :mod:`plugin_bridge.osc`), and at exit prints its counters
(xruns, underruns, late blocks, reconnects).

Example::

    stemserve serve --model unet &
    stemserve bridge --server 127.0.0.1:50051 --model unet --target vocals \\
        --connect-in system:capture_1 --connect-in system:capture_2 \\
        --connect-out system:playback_1 --connect-out system:playback_2 --osc-port 9000
    oscsend localhost 9000 /stemserve/mix f 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from stemserve.plugin_bridge.bridge import BridgeSettings


def _gain(text: str) -> tuple[str, float]:
    stem, sep, value = text.partition("=")
    if not sep or not stem:
        raise argparse.ArgumentTypeError(f"expected STEM=VALUE, got {text!r}")
    try:
        return stem, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"gain of {stem!r} must be a number, got {value!r}") from None


def _stems(text: str) -> tuple[str, ...]:
    stems = tuple(s.strip() for s in text.split(",") if s.strip())
    if not stems:
        raise argparse.ArgumentTypeError(f"expected a comma list of stem names, got {text!r}")
    return stems


def resolve_model(args: argparse.Namespace, prog: str) -> str | None:
    """``--model``, or the server's default (its first listed model, as ``separate`` uses); None after printing why."""
    if args.model:
        return str(args.model)
    from stemserve.plugin_bridge.client import StemClient, StemServeError

    tls_root = None
    if args.tls_root:
        with open(args.tls_root, "rb") as f:
            tls_root = f.read()
    try:
        with StemClient(args.server, token=args.token, tls_root=tls_root) as client:
            client.wait_serving(timeout=args.connect_timeout)
            models = client.list_models()
    except StemServeError as err:
        print(f"{prog}: no --model given and cannot ask the server for its default: {err}", flush=True)
        return None
    if not models:
        print(f"{prog}: no --model given and the server at {args.server} serves no models", flush=True)
        return None
    print(f"model {models[0].name} (the server's default)", flush=True)
    return models[0].name


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``bridge`` and ``bridge-render``: the server, the session, the latency."""
    parser.add_argument("--server", default="127.0.0.1:50051", help="server address host:port")
    parser.add_argument("--model", default=None, help="model name (default: the server's default, the first it lists)")
    parser.add_argument(
        "--stems",
        type=_stems,
        default=(),
        metavar="A,B",
        help="stems the server computes (default all); one stem of four costs the server about a quarter",
    )
    parser.add_argument("--target", default=None, help="target source (default: the mix of all stems)")
    parser.add_argument("--mix", type=float, default=1.0, help="dry/wet 0..1 (default 1: stems only)")
    parser.add_argument("--gain", type=_gain, action="append", default=[], metavar="STEM=G", help="per-stem gain 0..1")
    parser.add_argument("--token", default=os.environ.get("STEMSERVE_TOKEN"), help="bearer token ($STEMSERVE_TOKEN)")
    parser.add_argument("--tls-root", default=None, help="PEM root certificate for a TLS server")
    parser.add_argument("--name", default="stemserve", help="client name (JACK client name, server logs)")
    parser.add_argument("--margin-ms", type=float, default=20.0, help="network slack added to the latency (ms)")
    parser.add_argument("--margin-samples", type=int, default=None, help="network slack in samples (wins over ms)")
    parser.add_argument("--latency-samples", type=int, default=None, help="fix the total latency up front")
    parser.add_argument("--underrun", choices=("dry", "silence"), default="dry", help="output when stems are late")
    parser.add_argument("--connect-timeout", type=float, default=15.0, help="seconds to wait for the first session")


def settings_from_args(args: argparse.Namespace, sample_rate: int, channels: int, block_frames: int) -> BridgeSettings:
    tls_root = None
    if args.tls_root:
        with open(args.tls_root, "rb") as f:
            tls_root = f.read()
    return BridgeSettings(
        address=args.server,
        model=args.model,
        sample_rate=sample_rate,
        channels=channels,
        target=args.target,
        mix=args.mix,
        gains=dict(args.gain),
        token=args.token,
        tls_root=tls_root,
        client_name=args.name,
        block_frames=block_frames,
        margin_ms=args.margin_ms,
        margin_samples=args.margin_samples,
        latency_samples=args.latency_samples,
        underrun=args.underrun,
        stems=tuple(args.stems),
    )


def configure(parser: argparse.ArgumentParser) -> None:
    add_session_arguments(parser)
    parser.add_argument(
        "--front",
        choices=("auto", "jack", "pyaudio"),
        default="auto",
        help="audio front (auto: JACK if a JACK server answers, else PortAudio)",
    )
    parser.add_argument("--channels", type=int, default=2, help="audio channels (ports) (default 2)")
    parser.add_argument("--jack-server", default=None, help="JACK server name (default: $JACK_DEFAULT_SERVER)")
    parser.add_argument(
        "--no-transport",
        action="store_true",
        help="JACK: do not reset the session when JACK transport stops or relocates",
    )
    parser.add_argument("--connect-in", action="append", default=[], metavar="PORT", help="JACK port -> in_N (repeat)")
    parser.add_argument(
        "--connect-out", action="append", default=[], metavar="PORT", help="out_N -> JACK port (repeat)"
    )
    parser.add_argument("--device", default=None, help="PortAudio device name (substring)")
    parser.add_argument("--host-api", default=None, help="PortAudio host API (substring, e.g. ALSA, JACK)")
    parser.add_argument("--rate", type=int, default=48000, help="PortAudio sample rate (JACK: the server's)")
    parser.add_argument("--buffer", type=int, default=256, help="PortAudio frames per buffer (JACK: the server's)")
    parser.add_argument("--list-devices", action="store_true", help="list PortAudio devices and exit")
    parser.add_argument(
        "--osc-port", type=int, default=None, help="UDP port for OSC parameters (0: any; off by default)"
    )
    parser.add_argument("--osc-host", default="127.0.0.1", help="OSC listen address (default loopback)")
    parser.add_argument("--osc-prefix", default="/stemserve", help="OSC address prefix")
    parser.add_argument(
        "--osc-notify",
        default=None,
        metavar="HOST:PORT",
        help="send the latency here once known, and /activity of a model with heads (see --osc-activity-hz)",
    )
    parser.add_argument(
        "--osc-activity-hz",
        type=float,
        default=30.0,
        help="most /activity sends per second to subscribers (default 30; blocks come up to ~200/s; the latest wins)",
    )
    parser.add_argument("--ardour-strip", type=int, default=None, help="accept Ardour messages for this ssid only")
    parser.add_argument("--ardour-plugin", type=int, default=None, help="accept Ardour messages for this piid only")
    parser.add_argument("--duration", type=float, default=None, help="run this many seconds, then exit")
    parser.add_argument("--stats-json", default=None, help="write latency and counters here at exit")


def _jack_available(server_name: str | None) -> bool:
    try:
        import jack
    except (ImportError, OSError):
        return False
    try:
        client = jack.Client("stemserve-probe", no_start_server=True, servername=server_name)
    except jack.JackError:
        return False
    client.close()
    return True


def run(args: argparse.Namespace) -> int:
    from stemserve.plugin_bridge.bridge import Bridge

    if args.list_devices:
        from stemserve.plugin_bridge.pyaudio_front import list_devices

        for info in list_devices():
            print(
                f"{info['index']:3d} {info['host_api_name']:<28} in {info['maxInputChannels']:>2} "
                f"out {info['maxOutputChannels']:>2}  {info['name']}"
            )
        return 0
    if not args.osc_activity_hz > 0:
        print(f"stemserve bridge: --osc-activity-hz must be > 0, got {args.osc_activity_hz}")
        return 2
    args.model = resolve_model(args, "stemserve bridge")
    if args.model is None:
        return 2
    front_kind = args.front
    if front_kind == "auto":
        front_kind = "jack" if sys.platform.startswith("linux") and _jack_available(args.jack_server) else "pyaudio"

    front: Any
    if front_kind == "jack":
        from stemserve.plugin_bridge.jack_front import JackFront

        try:
            front = JackFront(args.name, args.channels, args.jack_server, follow_transport=not args.no_transport)
        except Exception as err:  # jack.JackError, or no libjack
            print(f"stemserve bridge: cannot open a JACK client: {err}")
            return 1
        settings = settings_from_args(args, front.sample_rate, args.channels, front.blocksize)
    else:
        settings = settings_from_args(args, args.rate, args.channels, args.buffer)
    try:
        bridge = Bridge(settings)
    except ValueError as err:
        print(f"stemserve bridge: {err}")
        return 2
    # The audio thread needs the GIL promptly; the default 5 ms switch interval is a whole JACK period.
    sys.setswitchinterval(0.0005)

    osc = None
    if args.osc_port is not None:
        from stemserve.plugin_bridge.osc import OscListener

        osc = OscListener(
            bridge.params,
            reset=bridge.reset,
            latency=lambda: None if bridge.latency is None else (bridge.latency.total, bridge.latency.sample_rate),
            stats=bridge.report,
            host=args.osc_host,
            port=args.osc_port,
            prefix=args.osc_prefix,
            ardour_strip=args.ardour_strip,
            ardour_plugin=args.ardour_plugin,
            activity_hz=args.osc_activity_hz,
        )
        print(f"OSC parameters on {args.osc_host}:{osc.start()} (prefix {args.osc_prefix})", flush=True)
        bridge.activity.add_listener(osc.send_activity)
        if args.osc_notify:
            host, _, port = args.osc_notify.rpartition(":")
            osc.subscribe((host, int(port)))

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    report = bridge.start(wait_s=args.connect_timeout)
    if report is None:
        why = bridge.status()["status_message"]
        print(
            f"stemserve bridge: no session on {args.server} yet ({why or 'no answer'}); passing silence and retrying",
            flush=True,
        )
    try:
        if front_kind == "jack":
            front.attach(bridge)
            front.start(args.connect_in, args.connect_out)
            ins = ", ".join(p.name for p in front.inports)
            outs = ", ".join(p.name for p in front.outports)
            print(
                f"JACK client {front.name}: {front.sample_rate} Hz, {front.blocksize} frames; in [{ins}] out [{outs}]",
                flush=True,
            )
        else:
            from stemserve.plugin_bridge.pyaudio_front import PyAudioFront, find_device

            front = PyAudioFront(bridge, find_device(args.device, args.host_api), args.buffer)
            front.start()
        published = False
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set():
            if not published and bridge.latency is not None:
                published = True
                print(bridge.latency.describe(), flush=True)
                print(f"LATENCY {bridge.latency.total}", flush=True)
                if front_kind == "jack":
                    front.publish_latency()
                if osc is not None and args.osc_notify:
                    host, _, port = args.osc_notify.rpartition(":")
                    osc.announce((host, int(port)))
            if front_kind == "jack" and front.shutdown.is_set():
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(0.1)
    finally:
        front.stop()
        bridge.stop()
        if osc is not None:
            osc.stop()
    summary = {
        "latency": None if bridge.latency is None else bridge.latency.total,
        "counters": bridge.stats(),
        **bridge.status(),
        **bridge.activity_report(),
    }
    print("STATS " + json.dumps(summary), flush=True)
    if args.stats_json:
        with open(args.stats_json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0
