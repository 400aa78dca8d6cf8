"""The install is one `stemserve` package: nothing generic lands in site-packages, nothing shadows it.

A wheel is built from a fresh clone of the committed tree, installed (without its
dependencies, which the test environment already has) into a fresh virtual
environment, and run from a folder that has packages of its own named ``models``
and ``server`` which fail loudly when imported.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (seeing the test environment's torch, grpc, ...) with the wheel of a fresh clone installed."""
    work = tmp_path_factory.mktemp("packaging")
    clone = work / "clone"
    run("git", "clone", "--quiet", "--no-hardlinks", ROOT, clone)
    pip = (sys.executable, "-m", "pip")
    run(*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", work / "dist", clone)
    (wheel,) = (work / "dist").glob("stemserve-*.whl")
    env = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", env)
    python = env / "bin" / "python"
    # The dependencies come from the test environment's site-packages, added as plain paths: a
    # .pth line is not itself processed, so the checkout's editable-install hook stays out.
    outer = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site_packages(env) / "_test_environment.pth").write_text("\n".join(sorted(outer)) + "\n")
    run(*pip, "--python", python, "install", "--quiet", "--no-deps", wheel)
    return env


def site_packages(env: Path) -> Path:
    purelib = sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)})
    return Path(purelib)


def test_the_wheel_installs_only_the_stemserve_package(venv: Path) -> None:
    names = sorted(p.name for p in site_packages(venv).iterdir() if not p.name.startswith("_"))
    assert names == ["stemserve", "stemserve-0.1.0.dist-info"]
    installed = sorted(p.name for p in (site_packages(venv) / "stemserve").iterdir())
    assert installed == ["bench", "models", "plugin_bridge", "protos", "server"]
    # The bundled weights and the demo clip travel with the package.
    weights = {p.name for p in (site_packages(venv) / "stemserve" / "models" / "weights").iterdir()}
    assert "conditioned_unet.safetensors" in weights
    assert (site_packages(venv) / "stemserve" / "models" / "demo" / "demo.wav").is_file()
    # So do the LV2 plugin's sources (`stemserve plugin install` builds them) and the proto they are generated from.
    lv2 = site_packages(venv) / "stemserve" / "plugin_bridge" / "lv2"
    assert (lv2 / "CMakeLists.txt").is_file() and (lv2 / "ttl" / "stemserve.ttl").is_file()
    assert (site_packages(venv) / "stemserve" / "protos" / "stemserve.proto").is_file()


def test_separate_works_from_a_folder_with_its_own_models_and_server_packages(venv: Path, tmp_path: Path) -> None:
    for name in ("models", "server", "protos"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} was imported')\n")
    clip, rate = sf.read(ROOT / "models" / "demo" / "demo.wav", dtype="float32", frames=3 * 44100)
    sf.write(tmp_path / "clip.wav", clip, rate)
    # The installed code, not the checkout's (the checkout's editable install is visible too).
    where = run(venv / "bin" / "python", "-c", "import stemserve.models as m; print(m.__file__)", cwd=tmp_path)
    assert where.stdout.strip().startswith(str(site_packages(venv)))
    run(venv / "bin" / "stemserve", "separate", "clip.wav", "--out", "stems", cwd=tmp_path, timeout=600)
    stems = sorted(p.name for p in (tmp_path / "stems").rglob("*.wav"))
    assert stems == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    for path in (tmp_path / "stems").rglob("*.wav"):
        audio, stem_rate = sf.read(path, dtype="float32")
        assert stem_rate == rate and audio.shape == clip.shape
