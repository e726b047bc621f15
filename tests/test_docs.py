"""The documentation builds without warnings and tells the truth about the topics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from flask_kaizen_webhooks.config import DEFAULTS
from flask_kaizen_webhooks.topics import BUILTIN_TOPICS

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


def test_topics_page_shows_every_topic_with_its_sample() -> None:
    text = (DOCS / "topics.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: json\n\n((?:   .*\n|\n)+)", text)
    samples = [json.loads(block) for block in blocks]
    for topic in BUILTIN_TOPICS:
        assert f"``{topic.name}`` ({topic.mode.value})" in text
        assert dict(topic.sample_payload) in samples


def test_every_config_key_is_documented() -> None:
    text = (DOCS / "configuration.rst").read_text()
    for name in DEFAULTS:
        assert f"``KAIZEN_WEBHOOKS_{name}``" in text, name


def test_readme_starts_with_the_two_commands() -> None:
    lines = [line for line in README.read_text().splitlines() if line.startswith("make ")]
    assert [line.split()[:2] for line in lines[:2]] == [["make", "demo"], ["make", "test"]]


def test_the_nodejs_verification_example_works(tmp_path: Path) -> None:
    import shutil
    import time

    import pytest

    from flask_kaizen_webhooks.signing import encode_payload, sign

    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    text = (DOCS / "integrators.rst").read_text()
    [block] = re.findall(r"\.\. code-block:: javascript\n\n((?:   .*\n|\n)+)", text)
    code = "\n".join(line[3:] for line in block.splitlines())
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
