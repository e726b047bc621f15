"""The Makefile: what each target installs on first use, and starting the demo afresh."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if shutil.which("make") is None:
    pytest.skip("make is not installed", allow_module_level=True)


def planned(target: str, venv: Path, **variables: str) -> str:
    """What ``make TARGET`` would run in a checkout without ``venv`` (a dry run)."""
    assignments = [f"{name}={value}" for name, value in {"VENV": str(venv), **variables}.items()]
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target, *assignments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def installed_extras(plan: str) -> list[str]:
    """The package specs the plan installs: ``.`` or ``.[extras]``."""
    return [line.split("-e ", 1)[1].strip("'") for line in plan.splitlines() if " -e " in line]


@pytest.mark.parametrize(
    ("target", "spec"),
    [
        ("demo", ".[metrics]"),
        ("test", ".[test,postgres,celery,metrics,docs]"),
        ("lint", ".[lint,postgres,celery,metrics,otel]"),
        ("docs", ".[docs]"),
        ("fuzz", ".[test,postgres,celery,metrics,docs]"),
        ("bench", ".[postgres,celery,metrics]"),
        ("screenshots", "."),
    ],
)
def test_each_target_installs_what_it_needs_on_first_use(
    tmp_path: Path, target: str, spec: str
) -> None:
    plan = planned(target, tmp_path / "venv")
    assert f"-m venv {tmp_path / 'venv'}" in plan
    assert installed_extras(plan) == [spec]


def test_an_install_is_made_once(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-demo").touch()  # newer than setup.cfg and pyproject.toml
    assert installed_extras(planned("demo", venv)) == []
    assert installed_extras(planned("test", venv)) == [".[test,postgres,celery,metrics,docs]"]


def test_reset_deletes_the_demo_database_and_clean_resets_too(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    instance.mkdir()
    for name in ("example_app.sqlite3", "example_app.sqlite3-journal", "other.txt"):
        (instance / name).write_text("x")
    done = subprocess.run(
        ["make", "--no-print-directory", "reset", f"DEMO_INSTANCE={instance}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in instance.iterdir()) == ["other.txt"]
    cleaning = planned("clean", tmp_path / "venv", DEMO_INSTANCE=str(instance))
    assert f"rm -f {instance}/example_app.sqlite3" in cleaning


def test_the_demo_keeps_its_database_where_reset_looks(tmp_path: Path) -> None:
    plan = planned("demo", tmp_path / "venv", DEMO_INSTANCE=str(tmp_path / "instance"))
    assert f"-m example_app --instance-path {tmp_path / 'instance'}" in plan


def test_the_screenshots_drive_the_systems_chromium_with_playwright(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    plan = planned("screenshots", venv)
    assert f"{venv}/bin/python -m pip install --quiet playwright requests" in plan
    assert "playwright install" not in plan  # no browser is downloaded
    assert plan.rstrip().endswith(f"{venv}/bin/python docs/screenshots.py")
    script = (ROOT / "docs" / "screenshots.py").read_text()
    assert 'executable_path=chromium_path(), args=["--no-sandbox"]' in script
