"""The shape of the package: layers whose imports only go down, no import circle, modules of a
readable size, and every exception a ``WebhooksError``."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import flask_kaizen_webhooks
from flask_kaizen_webhooks import WebhooksError

PACKAGE = Path(flask_kaizen_webhooks.__file__).parent
#: Each layer may import from the layers after it, never from those before it.
LAYERS = [
    {"extension", "cli", "cli_db", "cli_registrations", "models"},
    {"web", "portal"},
    {"state", "recording"},
    {"delivery"},
    {"storage"},
]
MOST_LINES = 450


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name below the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The package's modules that ``name`` imports (by dotted name below the package)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1] if node.level > 1 else package
            target = ".".join([*base, *([node.module] if node.module else [])])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "flask_kaizen_webhooks."
        ):
            target = (node.module or "").removeprefix("flask_kaizen_webhooks.")
        else:
            continue
        for alias in node.names:  # ``from package import module`` imports that module
            candidate = f"{target}.{alias.name}".strip(".")
            found = candidate if candidate in known else target
            if found in known and found != name:
                yield found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imports(name, path, known)) for name, path in known.items() if name}


def layer(name: str) -> int | None:
    top = name.split(".")[0]
    return next((index for index, names in enumerate(LAYERS) if top in names), None)


def test_imports_only_go_down_the_layers() -> None:
    upward = [
        (name, target)
        for name, targets in graph().items()
        for target in targets
        if layer(name) is not None and layer(target) is not None and layer(target) < layer(name)  # type: ignore[operator]
    ]
    assert upward == []
    # The lowest modules (config, errors, topics, signing, ...) import no layer at all.
    low = [
        (name, target)
        for name, targets in graph().items()
        if layer(name) is None
        for target in targets
        if layer(target) is not None
    ]
    assert low == []


def test_no_import_circle() -> None:
    edges = graph()
    circles = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            circles.append([*path[path.index(name) :], name])
            return
        if name in done:
            return
        for target in sorted(edges.get(name, ())):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])
    assert circles == []


def test_the_check_sees_an_upward_import() -> None:
    """The layer check is not vacuous: storage importing the state would be caught."""
    assert layer("storage.outbox") is not None and layer("state") is not None
    assert layer("state") < layer("storage.outbox")  # type: ignore[operator]
    assert "storage.rows" in graph()["storage.claims"]


def test_no_module_is_longer_than_it_should_be() -> None:
    long = {
        name: lines
        for name, path in modules().items()
        if (lines := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert long == {}


def test_every_exception_of_the_package_is_a_webhooks_error() -> None:
    outside = []
    for info in pkgutil.walk_packages(flask_kaizen_webhooks.__path__, "flask_kaizen_webhooks."):
        if ".migrations.env" in info.name or ".migrations.versions" in info.name:
            continue  # Alembic's scripts, run by Alembic, not imported
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("flask_kaizen_webhooks")
                and not issubclass(value, WebhooksError)
            ):
                outside.append(f"{info.name}.{name}")
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, WebhooksError):
                assert value.__module__ == "flask_kaizen_webhooks.errors", name
    assert outside == []
