"""What the distributions hold: the installed package without the demo, the sdist with it, and
the migrations' scripts in both."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, and the wheel built from it, as a release is built (``python -m build``)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    [built] = dist.glob("*.whl")
    return built


def test_the_wheel_holds_the_package_and_its_migrations_but_not_the_demo(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as opened:
        wheel_names = opened.namelist()
    tops = {name.split("/")[0] for name in wheel_names}
    assert "flask_kaizen_webhooks" in tops
    assert not {"example_app", "tests", "bench"} & tops
    assert "flask_kaizen_webhooks/storage/migrations/versions/r0002_call_counts.py" in wheel_names
    assert "flask_kaizen_webhooks/py.typed" in wheel_names


def test_the_wheel_requires_nothing_only_the_demo_or_the_tests_use(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as opened:
        metadata = next(name for name in opened.namelist() if name.endswith("METADATA"))
        lines = opened.read(metadata).decode().splitlines()
    required = [
        line for line in lines if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert required and not any("requests" in line for line in required)


def test_the_sdist_carries_the_demo_beside_the_package(dist: Path) -> None:
    [built] = dist.glob("*.tar.gz")
    with tarfile.open(built) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert "example_app/__main__.py" in names and "Makefile" in names
    assert "flask_kaizen_webhooks/storage/migrations/versions/r0001_initial.py" in names
