"""Incidents read back from the audit log: grouped by id, ordered, summarised and timed from the alert's start."""

import json

from ray_app.incidents import new_incident_id, read_incidents, record_step, render_chain, render_incidents


def _write(log, records):
    with log.open("a") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")


def test_a_chain_is_grouped_ordered_and_timed_from_the_alert(tmp_path):
    log = tmp_path / "audit.jsonl"
    t0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z
    _write(log, [
        {"ts": t0 + 30, "time": "x", "action": "alert", "incident": "inc-a", "trigger": "FeatureDriftPersistent(x0)",
         "job_id": "retrain-inc-a", "starts_at": "2026-09-21T14:13:20Z"},
        {"ts": t0 + 1, "time": "x", "action": "promote", "model": "m", "version": "1"},  # no incident: not listed
        {"ts": t0 + 40, "time": "x", "action": "job-start", "incident": "inc-a"},
        {"ts": t0 + 100, "time": "x", "action": "trained", "incident": "inc-a", "version": "7",
         "dataset_version": "ds-1"},
        {"ts": t0 + 60, "time": "x", "action": "data-gate", "incident": "inc-a"},  # out of order in the file
        {"ts": t0 + 130, "time": "x", "action": "gate", "incident": "inc-a"},
        {"ts": t0 + 150, "time": "x", "action": "rollout-step", "incident": "inc-a", "percent": 50},
        {"ts": t0 + 170, "time": "x", "action": "rollout-promote", "incident": "inc-a", "version": "7"},
    ])
    [incident] = read_incidents(log)
    assert [r["action"] for r in incident.records] == ["alert", "job-start", "data-gate", "trained", "gate",
                                                      "rollout-step", "rollout-promote"]
    assert incident.started == t0 and incident.outcome == "promoted"
    assert incident.offsets() == {"job": 40, "data gate": 60, "trained": 100, "gate": 130, "outcome": 170}
    summary = incident.summary()
    assert summary["version"] == "7" and summary["dataset_version"] == "ds-1" and summary["job"] == "retrain-inc-a"
    table = render_incidents([incident])
    assert "inc-a" in table and "promoted" in table and "v7" in table and table.splitlines()[1].endswith("170")
    assert "+  170.0 s  rollout-promote" in render_chain(incident)


def test_outcomes_and_open_incidents(tmp_path):
    log = tmp_path / "audit.jsonl"
    record_step(log, "inc-b", "alert", trigger="t")
    record_step(log, "inc-b", "job-start")
    record_step(log, "inc-c", "alert", trigger="t")
    record_step(log, "inc-c", "data-gate-failed", violations=["x0: range"])
    _write(log, [{"ts": 2e9, "time": "x", "action": "reject", "incident": "inc-d"}])
    _write(log, [{"ts": 2e9 - 100, "time": "x", "action": "alert", "incident": "inc-d"}])
    outcomes = {i.id: i.outcome for i in read_incidents(log)}
    assert outcomes == {"inc-b": "open", "inc-c": "rejected by the data gate", "inc-d": "rejected by the model gate"}
    open_one = next(i for i in read_incidents(log) if i.id == "inc-b")
    assert open_one.offsets()["outcome"] is None and open_one.offsets()["job"] >= 0
    rejected = next(i for i in read_incidents(log) if i.id == "inc-d")
    assert rejected.offsets()["gate"] == rejected.offsets()["outcome"] == 100  # a rejection is the gate's decision
    assert render_incidents([]).startswith("no incidents yet")


def test_incident_ids_sort_by_time_and_name_the_alert():
    early, late = new_incident_id("abcdef0123456789", 1_790_000_000), new_incident_id("ff", 1_790_000_100)
    assert early == "inc-20260921-141320-abcdef012345" and early < late
    assert new_incident_id(None, 1_790_000_000).endswith("-manual")
