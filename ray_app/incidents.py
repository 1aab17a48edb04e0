"""Incidents: one turn of the retraining loop, from the alert that started it to the promotion or rejection it
ended in, under one id.

The audit log itself (append, read) lives here too: a module light enough for the CLI to import. The webhook
opens an incident for each alert it acts on and names the job after it; every stage of that job
appends its step to the audit log with the same `incident` field (decisions keep their usual records, with the
id added), and the job's MLflow run carries it as a tag. `ray-app incidents` reads the chain back.
"""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# What ends an incident, and the milestones timed on the way (the gate's decision: passed, or a decision record).
OUTCOMES = {"promote": "promoted", "rollout-promote": "promoted", "reject": "rejected by the model gate",
            "rollout-rollback": "rolled back", "data-gate-failed": "rejected by the data gate"}
MILESTONES = (("job", ("job-start",)), ("data gate", ("data-gate", "data-gate-failed")), ("trained", ("trained",)),
              ("gate", ("gate", "reject", "promote")))


def new_incident_id(fingerprint: str | None, now: float | None = None) -> str:
    """`inc-<UTC time>-<alert fingerprint>`: sortable by time, and traceable to the alert."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now or time.time()))
    return f"inc-{stamp}-{(fingerprint or 'manual')[:12]}"


def retrain_job_id(incident: str) -> str:
    """The Ray job submission id of an incident's retraining job."""
    return f"retrain-{incident}"


def append_audit(audit_log: Path, record: dict) -> dict:
    """Append one record to the JSONL audit log, stamped with the time (UTC, and epoch seconds in `ts`)."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ts": time.time(), **record}
    audit_log.parent.mkdir(parents=True, exist_ok=True)
    with audit_log.open("a") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
    return record


def read_audit(audit_log: Path) -> list[dict]:
    """Every record of the append-only audit log, oldest first."""
    if not audit_log.exists():
        return []
    return [json.loads(line) for line in audit_log.read_text().splitlines() if line.strip()]


def record_step(audit_log: Path, incident: str | None, action: str, **details) -> dict:
    """Append one step of an incident to the audit log (the decisions go through `ModelRegistry.record_decision`,
    which writes the same kind of line)."""
    return append_audit(audit_log, {"action": action, "incident": incident, **details})


@dataclass
class Incident:
    """An incident's records, oldest first, and what they add up to."""

    id: str
    records: list[dict]

    def first(self, *actions: str) -> dict | None:
        return next((r for r in self.records if r["action"] in actions), None)

    @property
    def started(self) -> float:
        """When the alert began firing (Alertmanager's startsAt), else when the webhook took it."""
        alert = self.first("alert") or self.records[0]
        starts = alert.get("starts_at")
        if isinstance(starts, str):
            try:
                return datetime.fromisoformat(starts.replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
        return _ts(alert)

    @property
    def outcome(self) -> str:
        ended = [r for r in self.records if r["action"] in OUTCOMES]
        return OUTCOMES[ended[-1]["action"]] if ended else "open"

    @property
    def ended(self) -> float | None:
        ended = [r for r in self.records if r["action"] in OUTCOMES]
        return _ts(ended[-1]) if ended else None

    def offsets(self) -> dict[str, float | None]:
        """Seconds from the alert's start to each milestone and to the outcome (None: not reached)."""
        marks = {name: self.first(*actions) for name, actions in MILESTONES}
        out = {name: (_ts(r) - self.started if r else None) for name, r in marks.items()}
        out["outcome"] = self.ended - self.started if self.ended is not None else None
        return out

    def summary(self) -> dict:
        alert = self.first("alert") or {}
        trained = self.first("trained") or {}
        return {"incident": self.id, "opened": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started)),
                "trigger": alert.get("trigger", "?"), "job": alert.get("job_id"),
                "dataset_version": trained.get("dataset_version"), "version": trained.get("version"),
                "outcome": self.outcome, "seconds": {k: None if v is None else round(v, 1)
                                                     for k, v in self.offsets().items()}}


def _ts(record: dict) -> float:
    if "ts" in record:
        return float(record["ts"])
    return float(calendar.timegm(time.strptime(record["time"], "%Y-%m-%dT%H:%M:%SZ")))  # records before "ts"


def read_incidents(audit_log: Path) -> list[Incident]:
    """Every incident in the audit log, oldest first."""
    grouped: dict[str, list[dict]] = {}
    for record in read_audit(audit_log):
        if record.get("incident"):
            grouped.setdefault(record["incident"], []).append(record)
    incidents = [Incident(key, sorted(records, key=_ts)) for key, records in grouped.items()]
    return sorted(incidents, key=lambda i: i.started)


def render_incidents(incidents: list[Incident]) -> str:
    """One line per incident: when, why, which job, how it ended, and the seconds from the alert to each step."""
    if not incidents:
        return "no incidents yet (the retrain webhook opens one per drift alert it acts on)"
    head = ["incident", "opened (UTC)", "trigger", "outcome", "model", *[n for n, _ in MILESTONES], "outcome s"]
    rows = [head]
    for incident in incidents:
        s = incident.summary()
        model = f"v{s['version']}" if s["version"] else "-"
        rows.append([s["incident"], s["opened"], s["trigger"], s["outcome"], model,
                     *[_seconds(s["seconds"][name]) for name, _ in MILESTONES], _seconds(s["seconds"]["outcome"])])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def render_chain(incident: Incident) -> str:
    """An incident's steps, one line each, with the seconds since the alert began; alerts that joined it while
    it ran are summed up in one line (`--json` lists them)."""
    lines = [f"{incident.id}: {incident.outcome}"]
    joined = [r for r in incident.records if r["action"] in ("alert-joined", "alert-deferred")]
    for record in incident.records:
        if record in joined:
            continue
        what = {k: v for k, v in record.items() if k not in _NOT_BRIEF}
        for side in ("challenger", "champion"):  # a rollout step: what each side served and how well
            if isinstance(what.get(side), dict):
                figures = what[side]
                what[side] = f"{figures.get('requests', 0):.0f} requests, online {figures.get('online')}"
        brief = ", ".join(f"{k}={_brief(v)}" for k, v in what.items() if v not in (None, "", [], {}))
        lines.append(f"  +{_ts(record) - incident.started:7.1f} s  {record['action']:<16} {brief}")
    if joined:
        features = sorted({str(a["labels"].get("feature")) for r in joined for a in r.get("alerts", [])})
        lines.append(f"  ({len(joined)} more alert(s) joined or waited on this incident: {', '.join(features)})")
    return "\n".join(lines)


_NOT_BRIEF = {"time", "ts", "incident", "action", "actor", "alerts", "steps", "figures", "checks", "model"}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _brief(value: object, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
