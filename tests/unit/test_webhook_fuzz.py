"""Property-based tests of the retrain webhook's real HTTP routes (uvicorn on 127.0.0.1): no body, header or path
costs a 5xx, and every 4xx says why. Job submission and rollout control are recorded (the Ray Jobs API and a live
rollout are exercised in tests/e2e); what is under test here is the HTTP handling in front of them."""

import threading
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ray_app.config import RuntimePaths
from ray_app.loop import RetrainWebhook, webhook_app
from tests.conftest import free_port
from tests.http_fuzz import assert_well_answered, damaged, deep, encode, json_values
from tests.unit.test_webhook import RecordedJobs, alert

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def webhook_url(tmp_path_factory):
    import uvicorn

    paths = RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path_factory.mktemp("webhook-home"))})
    webhook = RetrainWebhook(paths, jobs=RecordedJobs())
    app = webhook_app(webhook, TOKEN, lambda action, reason: {"decision": action, "reason": reason})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "webhook did not start"
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    server.should_exit = True
    thread.join(timeout=10)


field = json_values | st.sampled_from(["firing", "resolved", "retrain", "2026-11-27T10:00:00Z"])
alerts = st.lists(json_values | st.fixed_dictionaries(
    {}, optional={"status": field, "fingerprint": field, "startsAt": field,
                  "labels": json_values | st.fixed_dictionaries({}, optional={"action": field, "alertname": field})}),
    max_size=4)
bodies = st.one_of(
    st.builds(encode, json_values),
    st.builds(lambda a: encode({"alerts": a}), alerts),
    st.builds(lambda a: encode({"alerts": a}), st.lists(st.builds(alert, fingerprint=st.text(max_size=8)), max_size=3)),
    st.builds(lambda reason: encode({"reason": reason}), json_values),
    damaged(encode({"alerts": [alert()]})),
    st.sampled_from([deep(200_000), deep(1_025, '{"a":'), b"", b"\xff\xfe"]),
)
paths = st.sampled_from(["/alerts", "/rollout/promote", "/rollout/abort", "/rollout/other", "/healthz", "/nope"])
auth = st.sampled_from([AUTH, {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"bearer {TOKEN}"}])


def answered_well(response: httpx.Response) -> None:
    plain = not response.headers.get("content-type", "").startswith("application/json")
    if response.status_code in (404, 405) and plain:
        return  # Starlette's own answer to an unknown path or method: plain text, and right
    assert_well_answered(response)


@given(path=st.sampled_from(["/alerts", "/rollout/promote", "/rollout/abort"]), body=bodies)
def test_no_authorized_body_costs_a_5xx(webhook_url, path, body):
    answered_well(webhook_url.post(path, headers={**AUTH, "content-type": "application/json"}, content=body))


@given(path=paths, method=st.sampled_from(["POST", "GET", "PUT"]), headers=auth, body=bodies)
def test_no_path_method_or_token_costs_a_5xx(webhook_url, path, method, headers, body):
    response = webhook_url.request(method, path, headers=headers, content=body)
    answered_well(response)
    if headers != AUTH and path != "/healthz" and response.status_code not in (404, 405):
        assert response.status_code == 401, response.text


def test_the_webhook_still_answers_after_the_fuzzing(webhook_url):
    assert webhook_url.get("/healthz").json() == {"status": "ok"}
    assert webhook_url.post("/rollout/abort", json={"reason": "why"}, headers=AUTH).json()["reason"] == "why"
