"""The documentation builds without warnings and tells the truth about the topics."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from flask import Flask

from flask_kaizen_webhooks import KaizenWebhooks
from flask_kaizen_webhooks.cli import webhooks_cli
from flask_kaizen_webhooks.config import DECLARATIONS, DEFAULTS, FORMER_NAMES
from flask_kaizen_webhooks.signing import encode_payload, sign
from flask_kaizen_webhooks.topics import BUILTIN_TOPICS
from tests.processes import HostProcess
from tests.receivers import wait_until

DOCS = Path(__file__).resolve().parent.parent / "docs"
README = DOCS.parent / "README.md"


def test_sphinx_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "index.html").is_file()


def test_every_picture_the_docs_and_the_readme_show_exists() -> None:
    shown = [
        (DOCS / path, path)
        for page in DOCS.glob("*.rst")
        for path in re.findall(r"^\s*\.\. (?:image|figure):: (\S+)", page.read_text(), re.MULTILINE)
    ]
    shown += [
        (README.parent / path, path)
        for path in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README.read_text())
    ]
    assert {path for _, path in shown} >= {
        "_static/portal/endpoints.png",
        "docs/_static/portal/endpoints.png",
    }
    for file, path in shown:
        assert file.is_file(), path
        assert file.read_bytes().startswith(b"\x89PNG"), path


def test_topics_page_shows_every_topic_with_its_sample() -> None:
    text = (DOCS / "topics.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: json\n\n((?:   .*\n|\n)+)", text)
    samples = [json.loads(block) for block in blocks]
    for topic in BUILTIN_TOPICS:
        assert f"``{topic.name}`` ({topic.mode.value})" in text
        assert dict(topic.sample_payload) in samples


def test_every_config_key_is_documented() -> None:
    text = (DOCS / "configuration.rst").read_text()
    for name in DECLARATIONS:
        assert f"``KAIZEN_WEBHOOKS_{name}``" in text, name


def test_readme_starts_with_the_two_commands() -> None:
    lines = [line for line in README.read_text().splitlines() if line.startswith("make ")]
    assert [line.split()[:2] for line in lines[:2]] == [["make", "demo"], ["make", "test"]]


def test_the_nodejs_verification_example_works(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    code = (SNIPPETS / "nodejs.txt").read_text()
    assert "snippets/nodejs.txt" in (DOCS / "integrators.rst").read_text()
    document = {"id": "p-1", "webhook_request_id": "r-1", "name": "Zoë"}
    good = sign(encode_payload(document), "signature_secret_0123")
    old = sign(encode_payload(document), "signature_secret_0123", issued_at=time.time() - 3600)
    script = tmp_path / "verify.js"
    script.write_text(
        code
        + f"""
console.log(JSON.stringify(verifyWebhook({json.dumps(good)}, "signature_secret_0123")));
for (const [body, secret] of [[{json.dumps(good)}, "wrong_secret_0123456"],
                              [{json.dumps(old)}, "signature_secret_0123"]]) {{
  try {{ verifyWebhook(body, secret); console.log("accepted"); }}
  catch (e) {{ console.log("refused: " + e.message); }}
}}
"""
    )
    result = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert json.loads(lines[0]) == document
    assert lines[1:] == ["refused: bad signature", "refused: expired"]


PACKAGE = DOCS.parent / "flask_kaizen_webhooks"
#: The verification code that the manual and the portal both show.
SNIPPETS = PACKAGE / "portal" / "snippets"
PAGES = [*sorted(DOCS.glob("*.rst")), README]
#: Environment variables of the test suite and the Makefile, not settings.
ENVIRONMENT = {"TEST_POSTGRES_URL", "REQUIRE_SERVICES", "FUZZ_EXAMPLES"}


def docstrings() -> list[tuple[str, str]]:
    """Every docstring of the package: (where, text)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = ast.get_docstring(node)
                if text:
                    found.append((f"{path.name}:{getattr(node, 'name', '')}", text))
    return found


def prose() -> list[tuple[str, str]]:
    """The text of every page and docstring: (where, text)."""
    return [(path.name, path.read_text()) for path in PAGES] + docstrings()


def test_every_setting_named_in_the_docs_and_docstrings_exists() -> None:
    for where, text in prose():
        for name in re.findall(r"KAIZEN_WEBHOOKS_([A-Z_]+)\b", text):
            if name.endswith("_"):  # a family, such as KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_*
                assert any(key.startswith(name) for key in DEFAULTS), (where, name)
            else:
                assert name in DEFAULTS or name in ENVIRONMENT, (where, name)
        for line in text.splitlines():
            if "KAIZEN_WEBHOOKS_DISPATCHER" in line:  # only to say that it is the former name
                assert "former name" in line, (where, line)


def spelled(seconds: float) -> str:
    """A delay as the docs spell it: 5 s, 5 min, 2 h."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g} {unit}"
    return f"{seconds:g} s"


def test_the_retry_schedule_and_its_length_agree_with_the_default() -> None:
    schedule = DEFAULTS["RETRY_SCHEDULE"]
    delays = [spelled(delay) for delay in schedule]
    total = f"{sum(schedule) / 3600:.1f} hours"
    for path in PAGES:
        text = " ".join(path.read_text().split())
        for listed in re.findall(r"\d+ (?:s|min|h)(?:(?:, | and | or )\d+ (?:s|min|h))+", text):
            assert re.split(r", | and | or ", listed) == delays, (path.name, listed)
        for length in re.findall(r"about ([^,;:.]*(?:hours|days?|a day[a-z ]*))", text):
            assert length == total, (path.name, length)
    for path in (README, DOCS / "operations.rst"):
        assert f"about {total}" in " ".join(path.read_text().split()), path.name


def test_the_api_page_names_where_the_openapi_document_is_served(tmp_path: Path) -> None:
    text = (DOCS / "api.rst").read_text()
    [path] = re.findall(r"``GET (\S*openapi\.json)``", text)
    assert path == f"{DEFAULTS['URL_PREFIX']}/openapi.json"
    app = Flask("openapi_path", instance_path=str(tmp_path))
    app.config.update(SECRET_KEY="k", KAIZEN_WEBHOOKS_EXECUTOR="none")
    KaizenWebhooks(app)
    assert app.test_client().get(path).status_code == 200


def raised_error_codes() -> set[str]:
    """The ``code`` of every API error the package raises."""
    codes = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            first = node.args[0]
            if name in ("ApiError", "__init__") and isinstance(first, ast.Constant):
                if isinstance(first.value, int) and len(node.args) > 1:
                    second = node.args[1]
                    if isinstance(second, ast.Constant) and isinstance(second.value, str):
                        codes.add(second.value)
            elif name == "ValidationError" and isinstance(first, ast.Constant):
                codes.add(first.value)
    return codes


def test_the_error_table_lists_every_error_code_the_api_answers() -> None:
    text = (DOCS / "api.rst").read_text()
    table = set(re.findall(r"^\d{3}\s+``([a-z_]+)``", text, re.MULTILINE))
    assert table == raised_error_codes()


def test_every_operator_command_and_option_is_documented() -> None:
    text = (DOCS / "operations.rst").read_text()
    terms = [line for line in text.splitlines() if line.startswith("``")]
    for name, command in webhooks_cli.commands.items():
        described = " ".join(term for term in terms if re.search(rf"``{name}\b", term))
        assert described, name
        for param in command.params:
            for option in param.opts:
                if option.startswith("--"):
                    assert option in described, (name, option)


def captioned(text: str, caption: str) -> str:
    """The code of the page's block captioned ``caption``."""
    pattern = rf"\.\. code-block:: \w+\n   :caption: {re.escape(caption)}\n\n((?:   .*\n|\n)+)"
    match = re.search(pattern, text)
    assert match, f"no block captioned {caption!r}"
    return textwrap.dedent(match[1]).strip() + "\n"


def test_the_quickstarts_own_test_passes_with_the_recorder(tmp_path: Path) -> None:
    text = (DOCS / "quickstart.rst").read_text()
    for name in ("host.py", "test_host.py"):
        (tmp_path / name).write_text(captioned(text, name))
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLASK_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_host.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_the_quickstart_host_runs_and_sends_its_first_webhooks(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    text = (DOCS / "quickstart.rst").read_text()
    for name in ("host.py", "receiver.py"):
        (tmp_path / name).write_text(captioned(text, name))
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLASK_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    start_host = captioned(text, "terminal 1: the host").rstrip()
    start_receiver = captioned(text, "terminal 2: the receiver").rstrip()
    assert start_host.endswith("flask --app host run")
    assert start_receiver.endswith("--port 6785")
    # Port 0: the system picks free ports, which the servers' startup lines tell.
    running = r"Running on http://127\.0\.0\.1:(\d+)"
    host = HostProcess(
        ["bash", "-c", start_host + " --port 0"], env, listening=running, cwd=tmp_path
    )
    receiver = HostProcess(
        ["bash", "-c", start_receiver.replace("--port 6785", "--port 0")],
        env,
        listening=running,
        cwd=tmp_path,
    )
    try:
        host_port, receiver_port = host.port, receiver.port
        steps = (
            captioned(text, "terminal 3: the integrator")
            .replace("127.0.0.1:5000", f"127.0.0.1:{host_port}")
            .replace("127.0.0.1:6785", f"127.0.0.1:{receiver_port}")
        )
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", steps],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        registered, tested, renamed = [json.loads(line) for line in done.stdout.splitlines()]
        assert set(registered) == {"id", "rev"}, registered
        [result] = tested["deliveries"]
        assert result["ok"] is True, result
        assert renamed == {"id": 1, "name": "Ann Lee"}
        receiver.wait_for_output(r"profile_updated \{'auditLog'")  # the sample payload of the test
        receiver.wait_for_output(
            r"profile_updated \{'id': 1, 'name': 'Ann Lee', 'webhook_request_id'"
        )

        def listed() -> str:
            command = ["flask", "--app", "host", "webhooks", "deliveries", "--status", "succeeded"]
            return subprocess.run(
                command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
            ).stdout

        wait_until(lambda: listed().endswith("\n2 deliveries\n"), timeout=30, interval=0.5)
    finally:
        host.stop()
        receiver.stop()


def documented_defaults() -> dict[str, object]:
    """Each setting's default as the configuration page gives it."""
    text = (DOCS / "configuration.rst").read_text()
    entry = r"^((?:``KAIZEN_WEBHOOKS_\w+``(?: and )?)+)\n   Defaults? ((?:``[^`]+``(?: and )?)+)"
    found: dict[str, object] = {}
    for names, values in re.findall(entry, text, re.MULTILINE):
        keys = re.findall(r"``KAIZEN_WEBHOOKS_(\w+)``", names)
        for key, value in zip(keys, re.findall(r"``([^`]+)``", values), strict=True):
            found[key] = ast.literal_eval(value)
    return found


def test_the_configuration_page_gives_every_default_as_the_code_has_it() -> None:
    def plain(value: object) -> object:
        return list(value) if isinstance(value, tuple) else value

    expected = {
        key: plain(declaration.default)
        for key, declaration in DECLARATIONS.items()
        if key not in FORMER_NAMES  # documented with the setting that took its place
    }
    assert documented_defaults() == expected
