"""OpenTelemetry: each attempt a span in the trace of the request that fired its event (kept with
the event for asynchronous topics, the current one for synchronous topics), with what it came
to and nothing secret; its ``traceparent`` sent to receivers only when the host says so; and
everything works, with no header, without OpenTelemetry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jose.jws
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import select, text

from flask_kaizen_webhooks import get_state, tracing
from flask_kaizen_webhooks.storage.tables import Attempt, Delivery
from tests.conftest import DELIVERY_CONFIG, register
from tests.processes import run_python
from tests.receivers import Received, Reply, wait_until

SECRET = "signature_secret_0123"
MARK = "payload-marker-5e0b"
TOKEN = "query-token-91f3"
PROFILE = {"id": "p-1", "note": MARK}
LOGIN = {"user_id": "u-1", "note": MARK}


@pytest.fixture(scope="module")
def provider() -> Iterator[TracerProvider]:
    """The SDK's provider, set once for the process (OpenTelemetry allows no second one)."""
    found = trace.get_tracer_provider()
    provider = found if isinstance(found, TracerProvider) else TracerProvider()
    if provider is not found:
        trace.set_tracer_provider(provider)
    yield provider


@pytest.fixture(scope="module")
def _exporter(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()  # what later tests trace is kept nowhere


@pytest.fixture
def exporter(_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    """The finished spans of this test alone."""
    _exporter.clear()
    return _exporter


@pytest.fixture
def tracer(provider: TracerProvider) -> trace.Tracer:
    """The host's own tracer, for the spans around its triggers."""
    return provider.get_tracer("host")


def attempt_spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The first ``count`` attempt spans to end, waiting for them."""

    def found() -> list[ReadableSpan]:
        spans = exporter.get_finished_spans()
        return [span for span in spans if span.name.startswith("webhook ")]

    wait_until(lambda: len(found()) >= count)
    return found()


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def by_path(server: Any, spans: list[ReadableSpan], path: str) -> list[ReadableSpan]:
    """The spans of the deliveries that went to ``path`` of ``server``, by attempt number."""
    ids = {request_id(received) for received in server.received if received.path == path}
    chosen = [span for span in spans if attributes(span)["webhook.delivery_id"] in ids]
    return sorted(chosen, key=lambda span: attributes(span)["webhook.attempt"])


def request_id(received: Received) -> str:
    return str(
        json.loads(jose.jws.get_unverified_claims(received.body.decode()))["webhook_request_id"]
    )


def elapsed_of(host: Any, delivery_id: str) -> list[float]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        query = select(Attempt.elapsed).where(Attempt.delivery_id == delivery_id)
        return list(session.scalars(query.order_by(Attempt.number)))


def trace_parent_of(host: Any, delivery_id: str) -> str | None:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return session.scalar(select(Delivery.trace_parent).where(Delivery.id == delivery_id))


def traceparent(span: Any) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def answering(request: Received, _number: int) -> Reply:
    return Reply(status=500 if request.path.startswith("/fail") else 200)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_each_async_attempt_is_a_span_in_the_trace_that_fired_its_event(
    make_host: Any, backend: str, receiver: Any, exporter: InMemorySpanExporter, tracer: Any
) -> None:
    host = make_host(backend, **DELIVERY_CONFIG)
    server = receiver(answering)
    ok = register(host, server.url("/ok"), secret=SECRET)["id"]
    failing = register(host, server.url("/fail"), secret=SECRET)["id"]
    with tracer.start_as_current_span("PUT /profile") as request, host.app.app_context():
        ids = host.webhooks.trigger("profile_updated", PROFILE)
    spans = attempt_spans(exporter, 4)  # one success; an attempt and two retries of a 500
    assert len(spans) == 4
    parent = request.get_span_context()
    for span in spans:
        assert span.name == "webhook profile_updated" and span.kind is SpanKind.CLIENT
        assert span.context.trace_id == parent.trace_id
        assert span.parent is not None and span.parent.span_id == parent.span_id
        assert span.start_time is not None and span.start_time >= (request.start_time or 0)
    [succeeded] = by_path(server, spans, "/ok")
    assert attributes(succeeded) == {
        "webhook.topic": "profile_updated",
        "webhook.registration_id": ok,
        "webhook.delivery_id": attributes(succeeded)["webhook.delivery_id"],
        "webhook.attempt": 1,
        "webhook.outcome": "success",
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "server.address": "127.0.0.1",
        "server.port": server.server.server_port,
    }
    assert attributes(succeeded)["webhook.delivery_id"] in ids
    assert succeeded.status.status_code is StatusCode.UNSET
    failed = by_path(server, spans, "/fail")
    assert [attributes(span)["webhook.attempt"] for span in failed] == [1, 2, 3]
    for span in failed:
        assert attributes(span)["webhook.registration_id"] == failing
        assert attributes(span)["webhook.outcome"] == "5xx"
        assert attributes(span)["http.response.status_code"] == 500
        assert span.status.status_code is StatusCode.ERROR
    # Each span lasts as long as its attempt did.
    failed_id = attributes(failed[0])["webhook.delivery_id"]
    succeeded_id = attributes(succeeded)["webhook.delivery_id"]
    # A span ends just before its attempt's record is written: wait for the records.
    wait_until(
        lambda: len(elapsed_of(host, failed_id)) == 3 and len(elapsed_of(host, succeeded_id)) == 1
    )
    for span in [succeeded, *failed]:
        recorded = elapsed_of(host, attributes(span)["webhook.delivery_id"])
        lasted = ((span.end_time or 0) - (span.start_time or 0)) / 1e9
        assert lasted == pytest.approx(recorded[attributes(span)["webhook.attempt"] - 1], abs=1e-6)
    assert trace_parent_of(host, ids[0]) == traceparent(request)


@pytest.mark.parametrize("backend", ["sqlite-hostdb", "postgres-hostdb"])
def test_an_event_in_the_host_transaction_keeps_its_trace_through_the_fan_out(
    make_host: Any, backend: str, receiver: Any, exporter: InMemorySpanExporter, tracer: Any
) -> None:
    host = make_host(backend, **DELIVERY_CONFIG)
    server = receiver()
    registrations = [register(host, server.url(f"/hook{n}"))["id"] for n in range(2)]
    with tracer.start_as_current_span("PUT /profile") as request, host.app.app_context():
        host.db.session.execute(text("SELECT 1"))  # the host's transaction is open
        ids = host.webhooks.trigger("profile_updated", PROFILE)
        host.db.session.commit()
    spans = attempt_spans(exporter, 2)
    parent = request.get_span_context()
    assert sorted(attributes(span)["webhook.delivery_id"] for span in spans) == sorted(ids)
    assert {attributes(span)["webhook.registration_id"] for span in spans} == set(registrations)
    for span in spans:
        assert span.context.trace_id == parent.trace_id
        assert span.parent is not None and span.parent.span_id == parent.span_id
        assert attributes(span)["webhook.outcome"] == "success"
    assert {trace_parent_of(host, delivery_id) for delivery_id in ids} == {traceparent(request)}


def test_an_event_fired_outside_any_trace_starts_one_per_attempt(
    make_host: Any, receiver: Any, exporter: InMemorySpanExporter
) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver()
    register(host, server.url())
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", PROFILE)
    [span] = attempt_spans(exporter, 1)
    assert span.parent is None and span.context.trace_id != 0
    assert attributes(span)["webhook.delivery_id"] == delivery_id
    assert trace_parent_of(host, delivery_id) is None


def test_a_sync_topics_attempts_are_children_of_the_current_span(
    make_host: Any, receiver: Any, exporter: InMemorySpanExporter, tracer: Any
) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver(answering)
    ok = register(host, server.url("/ok"), topic="user_logged_in")["id"]
    failing = register(host, server.url("/fail"), topic="user_logged_in")["id"]
    with tracer.start_as_current_span("POST /sso/login") as login, host.app.app_context():
        results = host.webhooks.trigger("user_logged_in", LOGIN)
        spans = attempt_spans(exporter, 2)  # ended before the call returned
    assert len(spans) == 2
    parent = login.get_span_context()
    answers = {result.registration_id: result for result in results}
    for span in spans:
        assert span.name == "webhook user_logged_in" and span.kind is SpanKind.CLIENT
        assert span.context.trace_id == parent.trace_id
        assert span.parent is not None and span.parent.span_id == parent.span_id
        found = attributes(span)
        result = answers[found["webhook.registration_id"]]
        assert found["webhook.delivery_id"] == result.delivery_id
        assert found["webhook.attempt"] == 1
        assert found["server.port"] == server.server.server_port
        lasted = ((span.end_time or 0) - (span.start_time or 0)) / 1e9
        assert lasted == pytest.approx(result.elapsed, abs=1e-6)
    outcomes = {
        attributes(span)["webhook.registration_id"]: (
            attributes(span)["webhook.outcome"],
            attributes(span)["http.response.status_code"],
            span.status.status_code,
        )
        for span in spans
    }
    assert outcomes == {
        ok: ("success", 200, StatusCode.UNSET),
        failing: ("5xx", 500, StatusCode.ERROR),
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgres-hostdb"])
def test_with_propagation_each_post_carries_its_attempt_spans_traceparent(
    make_host: Any, backend: str, receiver: Any, exporter: InMemorySpanExporter, tracer: Any
) -> None:
    host = make_host(backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_PROPAGATE_TRACE=True)
    server = receiver(answering)
    register(host, server.url("/fail"))
    register(host, server.url("/ok"), topic="user_logged_in")
    with tracer.start_as_current_span("request") as request, host.app.app_context():
        if host.db is not None:
            host.db.session.execute(text("SELECT 1"))
        host.webhooks.trigger("profile_updated", PROFILE)
        if host.db is not None:
            host.db.session.commit()
        host.webhooks.trigger("user_logged_in", LOGIN)
    spans = attempt_spans(exporter, 4)  # three attempts of the 500, one login
    received = server.wait_for(4)
    trace_id = f"{request.get_span_context().trace_id:032x}"
    span_ids = {
        (attributes(span)["webhook.delivery_id"], attributes(span)["webhook.attempt"]): span
        for span in spans
    }
    assert len(span_ids) == 4
    for post in received:
        span = span_ids[(post.headers["Webhook-Id"], int(post.headers["Webhook-Attempt"]))]
        version, trace_part, parent_id, flags = post.headers["traceparent"].split("-")
        assert (version, trace_part, flags) == ("00", trace_id, f"{span.context.trace_flags:02x}")
        assert parent_id == f"{span.context.span_id:016x}"  # the attempt's own span
        assert "tracestate" not in post.headers


def test_without_propagation_no_trace_header_goes_out(
    make_host: Any, receiver: Any, exporter: InMemorySpanExporter, tracer: Any
) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver()
    register(host, server.url("/async"))
    register(host, server.url("/sync"), topic="user_logged_in")
    with tracer.start_as_current_span("request"), host.app.app_context():
        host.webhooks.trigger("profile_updated", PROFILE)
        host.webhooks.trigger("user_logged_in", LOGIN)
    attempt_spans(exporter, 2)  # traced all the same
    for post in server.wait_for(2):
        assert not {"traceparent", "tracestate"} & {name.lower() for name in post.headers}


def test_no_span_holds_a_secret_the_payload_or_the_urls_query(
    make_host: Any, receiver: Any, exporter: InMemorySpanExporter, tracer: Any
) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_PROPAGATE_TRACE=True)
    server = receiver(answering)
    urls = [server.url(f"/fail?token={TOKEN}"), server.url(f"/ok?token={TOKEN}")]
    register(host, urls[0], secret=SECRET)
    register(host, urls[1], topic="user_logged_in", secret=SECRET)
    with tracer.start_as_current_span("request"), host.app.app_context():
        host.webhooks.trigger("profile_updated", PROFILE)
        host.webhooks.trigger("user_logged_in", LOGIN)
    spans = attempt_spans(exporter, 4)
    server.wait_for(4)
    told = repr([(span.name, attributes(span), span.status.description) for span in spans])
    for secret in (SECRET, MARK, TOKEN, "/fail", "/ok", "http://"):
        assert secret not in told


def test_an_attempt_without_a_stored_trace_starts_a_new_one_wherever_it_starts(
    exporter: InMemorySpanExporter, tracer: Any
) -> None:
    # The client's thread may hold a context of its own (one copied from the thread that
    # started it): an asynchronous attempt's parent is only ever the trace its event kept.
    made = {
        parent: tracing.attempt_span(
            topic="profile_updated",
            registration_id="r-1",
            delivery_id=f"d-{parent}",
            number=1,
            url="https://hooks.example.com:8443/in?token=" + TOKEN,
            parent=parent,
            headers=None,
        )
        for parent in (None, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    }
    with tracer.start_as_current_span("elsewhere"):
        for span in made.values():
            span.start()
            span.end("timeout", None, 0.5)
    fresh, kept = sorted(attempt_spans(exporter, 2), key=lambda span: span.parent is not None)
    assert fresh.parent is None
    assert kept.parent is not None and kept.parent.span_id == 0xB7AD6B7169203331
    assert kept.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    for span in (fresh, kept):
        assert ((span.end_time or 0) - (span.start_time or 0)) / 1e9 == pytest.approx(0.5)
        assert span.status.status_code is StatusCode.ERROR
        found = attributes(span)
        assert (found["server.address"], found["server.port"]) == ("hooks.example.com", 8443)
        assert found["webhook.outcome"] == "timeout" and "http.response.status_code" not in found


#: A host in a process of its own that sends a webhook of each kind, then says what it saw.
WITHOUT = """
import json, sys, time
if {blocked}:
    sys.modules["opentelemetry"] = None  # "import opentelemetry" fails
from flask import Flask
from flask_kaizen_webhooks import KaizenWebhooks, get_state, tracing
from flask_kaizen_webhooks.storage import registrations
from flask_kaizen_webhooks.storage.tables import Delivery
app = Flask("untraced")
app.config.update(
    SECRET_KEY="untraced-secret-key", KAIZEN_WEBHOOKS_DATABASE_URI="sqlite:///{database}",
    KAIZEN_WEBHOOKS_ALLOW_HTTP=True, KAIZEN_WEBHOOKS_ALLOWED_NETWORKS=["127.0.0.1/32"],
    KAIZEN_WEBHOOKS_POLL_INTERVAL=0.05, KAIZEN_WEBHOOKS_PROPAGATE_TRACE=True,
)
webhooks = KaizenWebhooks(app)
with app.app_context():
    state = get_state()
    with state.database.writing() as session:
        for topic in ("profile_updated", "user_logged_in"):
            registrations.create_registration(
                session, owner="o", topic=topic, url={url!r} + "/" + topic,
                sealed_secret=state.secrets.seal("signature_secret_0123"),
            )
    [delivery_id] = webhooks.trigger("profile_updated", {{"id": "p-1"}})
    [result] = webhooks.trigger("user_logged_in", {{"user_id": "u-1"}})
    deadline = time.monotonic() + 20
    while True:
        with state.database.independent_session() as session:
            delivery = session.get(Delivery, delivery_id)
            status, kept = delivery.status, delivery.trace_parent
        if status != "pending" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    webhooks.shutdown(app)
span = tracing.attempt_span(
    topic="t", registration_id="r", delivery_id="d", number=1, url={url!r}, parent=None,
    headers={{}},
)
print(json.dumps({{
    "available": tracing.AVAILABLE, "opentelemetry": "opentelemetry.trace" in sys.modules,
    "async": status, "sync": result.ok, "kept": kept, "no_span": span is tracing.NO_SPAN,
}}))
"""


@pytest.mark.parametrize("blocked", [True, False], ids=["no-opentelemetry", "api-without-sdk"])
def test_without_opentelemetry_or_its_sdk_webhooks_go_out_with_no_trace_header(
    tmp_path: Path, receiver: Any, blocked: bool
) -> None:
    server = receiver()
    code = WITHOUT.format(blocked=blocked, database=tmp_path / "untraced.db", url=server.url(""))
    seen = json.loads(run_python(code).splitlines()[-1])
    assert seen == {
        "available": not blocked,
        "opentelemetry": not blocked,
        "async": "succeeded",
        "sync": True,
        "kept": None,
        "no_span": True,  # nothing to record or pass on: nothing made
    }
    posts = server.wait_for(2)
    assert sorted(post.path for post in posts) == ["/profile_updated", "/user_logged_in"]
    for post in posts:
        assert not {"traceparent", "tracestate"} & {name.lower() for name in post.headers}
