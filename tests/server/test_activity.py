"""A model with heads (multitask_unet) streamed through the real gRPC server: every StemBlock carries the
heads of the frames its audio estimates, equal to the model's heads computed offline on the same windows;
a model without heads sends none; the descriptions say which models have heads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from stemserve.models import registry
from stemserve.models.apply import WindowPlan
from stemserve.models.checkpoint import load_model, save_checkpoint
from stemserve.models.multitask_unet import MultitaskUNet
from stemserve.models.stft import magnitude_phase, stft
from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from tests.server.conftest import TINY_UNET, StreamCall, block_sizes, noise, running_server

HEADS_TOLERANCE = 1e-5


def gapped_signal() -> np.ndarray:
    """Noise with a silent gap over [0.25 s, 0.375 s) (16 kHz mono)."""
    signal = noise(0.5, seed=7)
    signal[:, GAP[0] : GAP[1]] = 0.0
    return signal


GAP = (4000, 6000)


def centred_multitask(signal: np.ndarray) -> MultitaskUNet:
    """A random-weight tiny multitask U-Net whose voicing head is rescaled so that its threshold lies between
    ``signal``'s silent and noisy frames: random weights alone leave every block on one side of 0.5 (the logits
    barely move), which would leave the f0's unvoiced branch untested."""
    torch.manual_seed(3)
    model = registry.build("multitask_unet", TINY_UNET)
    assert isinstance(model, MultitaskUNet)
    model.eval()
    _, logits = offline_heads(model, signal, plan=WindowPlan(8, 2, 2, "taper", 64, 16))
    hop = model.config.hop_length
    silent = float(np.median(logits[GAP[0] // hop + 8 : GAP[1] // hop - 8]))
    loud = float(np.median(logits[: GAP[0] // hop - 8]))
    threshold, scale = (silent + loud) / 2, 4.0 / abs(loud - silent)
    head = model.voicing_head.out
    with torch.no_grad():
        head.weight *= scale
        head.bias.copy_(scale * (head.bias - threshold))
    return model


def offline_heads(model: MultitaskUNet, signal: np.ndarray, plan: WindowPlan) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame head probabilities of ``signal (1, T)`` followed by silence, windows tiled by ``plan`` and
    combined with its weights: ``(K + 1 + P, frames)`` probabilities and ``(frames,)`` voicing logits."""
    n_fft, hop = model.config.n_fft, model.config.hop_length
    tail = 4 * plan.size * hop + n_fft
    padded = torch.nn.functional.pad(torch.from_numpy(signal), (n_fft - hop, tail))  # frame k = column k
    mags, _ = magnitude_phase(stft(padded, n_fft, hop))  # (1, F, N)
    frames = mags.shape[-1]
    starts = [plan.start(j) for j in range(frames) if plan.start(j) + plan.size <= frames]
    before = -min(starts)  # frames before 0 are silence
    mags = torch.nn.functional.pad(mags, (before, 0))
    windows = torch.stack([mags[..., before + a : before + a + plan.size] for a in starts])  # (J, 1, F, size)
    with torch.inference_mode():
        _, heads = model.forward_heads(windows)
    probs = torch.cat([heads.activity.sigmoid(), heads.voicing[:, None].sigmoid(), heads.pitch.softmax(dim=1)], dim=1)
    weights = plan.weights(torch.float64).numpy()
    num = np.zeros((probs.shape[1], frames))
    den = np.zeros(frames)
    voicing_logits = np.zeros(frames)
    for a, p, v in zip(starts, probs.double().numpy(), heads.voicing.numpy(), strict=True):
        for i in range(plan.size):
            if a + i >= 0 and weights[i] > 0:
                num[:, a + i] += weights[i] * p[:, i]
                den[a + i] += weights[i]
                voicing_logits[a + i] = v[i]
    covered = den > 0
    return num[:, covered] / den[covered], voicing_logits[covered]


def expected_block(
    probs: np.ndarray, position: int, frames: int, latency: int, n_fft: int, hop: int, sources: int, pitch_min: int
) -> tuple[list[float], float, float] | None:
    """The heads a block of ``frames`` output samples at ``position`` should carry: its audio estimates input
    samples ``[position - L, position + frames - L)``; frame k is centred on input sample k * hop + hop - n_fft / 2 and
    stands for the hop samples around it. Means over those frames; f0 = the voicing-weighted most salient semitone."""
    first, end = max(0, position - latency), position + frames - latency
    if end <= first:
        return None
    centre = hop - n_fft / 2  # of frame 0
    ks = sorted({math.floor((s - centre + hop / 2) / hop) for s in (first, end - 1)})
    chosen = probs[:, ks[0] : ks[-1] + 1]
    voicing = chosen[sources]
    salience = (chosen[sources + 1 :] * voicing).sum(axis=1)
    f0 = 440.0 * 2 ** ((pitch_min + int(salience.argmax()) - 69) / 12) if voicing.mean() > 0.5 else 0.0
    return list(chosen[:sources].mean(axis=1)), float(voicing.mean()), f0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder: Path = tmp_path_factory.mktemp("heads")
    signal = gapped_signal()
    model = centred_multitask(signal)
    torch.manual_seed(1)
    plain = registry.build("multi_unet", TINY_UNET)
    paths = {
        "heads": str(save_checkpoint(model, folder / "heads.pt")),
        "plain": str(save_checkpoint(plain, folder / "plain.pt")),
    }
    with running_server(dict(paths)) as server, grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.SeparationStub(channel), paths, signal


def stream_blocks(
    stub: pb_grpc.SeparationStub, model: str, signal: np.ndarray
) -> tuple[pb.SessionOpened, list[pb.StemBlock]]:
    call = StreamCall(stub)
    opened = call.open(model)
    sizes = block_sizes(signal.shape[1], seed=4, largest=300)
    start = 0
    for n in sizes:
        call.send_block(signal[:, start : start + n])
        start += n
    call.send(control=pb.Control(kind=pb.Control.FLUSH))  # the tail: the last L input samples
    blocks = [call.receive_block() for _ in range(len(sizes) + 1)]
    call.close()
    return opened, blocks


def test_every_block_carries_the_offline_heads_of_its_frames(served) -> None:  # type: ignore[no-untyped-def]
    stub, paths, signal = served
    opened, blocks = stream_blocks(stub, "heads", signal)
    latency = opened.latency.total
    info = next(m for m in stub.ListModels(pb.ListModelsRequest()).models if m.name == "heads")
    plan = WindowPlan(**{k: v for k, v in json.loads(info.description_json)["plan"].items() if k in WINDOW_FIELDS})
    model = load_model(paths["heads"]).eval()
    assert isinstance(model, MultitaskUNet)
    probs, _ = offline_heads(model, signal, plan)
    c = model.config
    sources = len(c.sources)

    assert sum(b.frames for b in blocks) == signal.shape[1] + latency
    voiced = unvoiced = 0
    for b in blocks:
        want = expected_block(probs, b.position, b.frames, latency, c.n_fft, c.hop_length, sources, c.pitch_min)
        if want is None:  # output wholly before input 0 (the silent pre-roll): no frames, no heads
            assert b.position + b.frames <= latency
            assert len(b.activity) == 0 and not b.HasField("lead_voicing") and not b.HasField("lead_f0_hz")
            continue
        activity, voicing, f0 = want
        assert len(b.activity) == sources
        assert all(0.0 <= a <= 1.0 for a in b.activity) and 0.0 <= b.lead_voicing <= 1.0
        assert np.abs(np.array(b.activity) - activity).max() <= HEADS_TOLERANCE, b.position
        assert abs(b.lead_voicing - voicing) <= HEADS_TOLERANCE, b.position
        assert b.lead_f0_hz == pytest.approx(f0, abs=1e-3), b.position
        voiced += f0 > 0
        unvoiced += f0 == 0
    assert voiced and unvoiced, (voiced, unvoiced)  # both branches of the f0 were exercised
    assert sum(len(b.activity) > 0 for b in blocks) >= len(blocks) - 2  # only the pre-roll lacks heads


WINDOW_FIELDS = ("size", "hop", "lookahead", "weighting", "n_fft", "hop_length")


def test_a_model_without_heads_sends_none(served) -> None:  # type: ignore[no-untyped-def]
    stub, _, signal = served
    _, blocks = stream_blocks(stub, "plain", signal[:, :2000])
    assert blocks and all(
        len(b.activity) == 0 and not b.HasField("lead_voicing") and not b.HasField("lead_f0_hz") for b in blocks
    )


def test_descriptions_say_which_models_have_heads(served) -> None:  # type: ignore[no-untyped-def]
    stub, _, _ = served
    listed = {m.name: json.loads(m.description_json) for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert listed["heads"]["heads"] == ["activity", "voicing", "f0"]
    assert listed["plain"]["heads"] == []
    # `stemserve models --json` prints each preset's describe().to_dict() (registry.describe_all)
    assert registry.build("multitask_unet", TINY_UNET).describe().to_dict()["heads"] == ["activity", "voicing", "f0"]
    assert registry.build("multi_unet", TINY_UNET).describe().to_dict()["heads"] == []


def test_at_a_resampled_client_rate_each_block_carries_the_heads_of_the_input_it_estimates(served) -> None:  # type: ignore[no-untyped-def]
    """A 48 kHz session on the 16 kHz model: the server resamples, and a block's heads must be those of the
    model-rate frames of the input its audio estimates (output position p is input p - L at 48 kHz, i.e.
    model sample (p - L) / 3). The signal has a silent gap, which the model's voicing head tells apart from
    noise: blocks estimating input wholly inside the gap are unvoiced, wholly in the noise voiced. A mapping
    that skipped the rate conversion would put the gap three times later."""
    from stemserve.server.engine.resample import StreamResampler

    stub, _, signal = served
    client_rate, model_rate = 48000, 16000
    up = StreamResampler(model_rate, client_rate, 1)
    padded = np.concatenate([signal, np.zeros((1, model_rate // 10), np.float32)], axis=1)
    audio = up.process(padded)[:, : 3 * signal.shape[1]]  # time-aligned: soxr holds back, never shifts
    call = StreamCall(stub)
    opened = call.open("heads", rate=client_rate)
    latency = opened.latency.total
    sizes = block_sizes(audio.shape[1], seed=5, largest=900)
    start = 0
    for n in sizes:
        call.send_block(audio[:, start : start + n])
        start += n
    blocks = [call.receive_block() for _ in range(len(sizes))]
    call.close()

    # Input seconds each block estimates; a frame (n_fft 64 at 16 kHz: 4 ms) and the resamplers' delays
    # (well under 1 ms) blur the gap's edges: 8 ms of margin.
    margin, (gap_start, gap_end) = 0.008, (GAP[0] / model_rate, GAP[1] / model_rate)
    noisy_end = signal.shape[1] / model_rate
    inside = voiced_noise = 0
    for b in blocks:
        first, end = (b.position - latency) / client_rate, (b.position + b.frames - latency) / client_rate
        if first < margin or not b.HasField("lead_voicing"):
            continue
        if gap_start + margin <= first and end <= gap_end - margin:
            assert b.lead_voicing < 0.5 and b.lead_f0_hz == 0.0, (first, end, b.lead_voicing)
            inside += 1
        elif end <= gap_start - margin or (gap_end + margin <= first and end <= noisy_end - margin):
            assert b.lead_voicing > 0.5 and b.lead_f0_hz > 0.0, (first, end, b.lead_voicing)
            voiced_noise += 1
    assert inside >= 3 and voiced_noise >= 10, (inside, voiced_noise)
