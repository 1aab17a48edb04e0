"""The stages on a multi-node cluster (head with no CPUs + worker nodes), submitted as a user submits them, and
worker nodes that die: under serving load and in the middle of training. The fault figures are printed (`-s`) for
bench/RESULTS.md; what a test requires of them is what must hold on any machine."""

from __future__ import annotations

import re

import httpx
import pytest
import yaml

from tests.conftest import SERVE_PORT, wait_until
from tests.multinode.conftest import CPUS_PER_NODE
from tests.multinode.faults import (
    PROGRESS,
    actor_nodes,
    app_replicas,
    node_killed_mid_training,
    node_names,
    replicated_ab_config,
    serve_cli,
    serving_faults,
    submit,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]
VERDICT = re.compile(r"pipeline: (PROMOTED|REJECTED|ROLLED BACK|CANARY \w+)[^\n]*\(exit [01]\)")


@pytest.fixture(scope="module")
def pipeline_job(cluster, spec):
    """`ray job submit -- ray-app pipeline` on the fresh cluster: the first job once lost its working directory."""
    return submit(cluster, "ray-app", "pipeline", "--spec", str(spec))


def test_pipeline_job_spreads_training_over_nodes_and_keeps_work_off_the_head(cluster, pipeline_job):
    from ray.util.state import list_tasks

    assert pipeline_job.returncode == 0, pipeline_job.output[-4000:]
    assert VERDICT.search(pipeline_job.output), pipeline_job.output[-4000:]
    assert "pipeline: PROMOTED" in pipeline_job.output  # no champion yet: the first version meets the floors
    workers = actor_nodes(cluster.dashboard_url, pipeline_job.job_id, "RayTrainWorker")
    assert len(workers) == 2 and len(set(workers)) == 2 and "head" not in workers, workers
    names = node_names(cluster.dashboard_url)
    tasks = [task for task in list_tasks(address=cluster.dashboard_url, filters=[("job_id", "=", pipeline_job.job_id)],
                                         detail=True, limit=10_000, raise_on_missing_output=False)
             if task.type == "NORMAL_TASK" and task.node_id]
    working = [task for task in tasks if (task.required_resources or {}).get("CPU", 0) > 0]
    assert len(working) > 10, "the job ran no Ray Data task"
    on_head = sorted({task.name for task in working if names.get(task.node_id) == "head"})
    assert not on_head, on_head  # reads, maps, writes; Ray Data's 0-CPU bookkeeping tasks may run anywhere
    # each progress line once: every node has its own session folder, so one log monitor reads each worker's log
    epochs = [int(m.group(1)) for m in PROGRESS.finditer(pipeline_job.output)]
    assert epochs == list(range(1, 7)), epochs


def test_training_on_several_nodes_with_a_plain_storage_folder_is_one_error_line(cluster, spec, tmp_path):
    job = submit(cluster, "ray-app", "train", "--spec", str(spec), env_vars={"RAY_APP_STORAGE": str(tmp_path)})
    assert job.returncode != 0
    assert re.search(r"error: storage path '.+' is a local folder but the cluster has 4 nodes: set RAY_APP_STORAGE "
                     r"to an s3:// or gs:// URI, or file:///path on a filesystem every node mounts", job.output), \
        job.output[-3000:]
    assert "Traceback" not in job.output, job.output[-3000:]


def test_tune_job_runs_trials_on_different_nodes(cluster, spec, tmp_path):
    from ray_app.config import ExperimentConfig

    cfg = ExperimentConfig.from_yaml(str(spec)).with_overrides(
        registry={"model_name": "cluster-tune", "experiment": "cluster-tune"},
        train={"num_workers": 1, "epochs": 2, "placement_strategy": "PACK"},
        tune={"space": {"train.lr": {"type": "loguniform", "low": 0.001, "high": 0.03}}, "num_samples": 2,
              "max_concurrent": 2, "trial_cpus": 0.25, "scheduler": "none"})
    tune_spec = tmp_path / "tune.yaml"
    tune_spec.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    job = submit(cluster, "ray-app", "tune", "--spec", str(tune_spec), "--name", "tune-cluster")
    assert job.returncode == 0, job.output[-4000:]
    trials = actor_nodes(cluster.dashboard_url, job.job_id, "RayTrainWorker")
    assert len(trials) == 2 and len(set(trials)) == 2 and "head" not in trials, trials


def test_ab_app_spread_over_nodes_survives_replicas_and_a_node_killed_under_load(cluster, pipeline_job, tmp_path):
    """Under load from 4 clients: a variant replica SIGKILLed, then a router replica, then a whole worker node."""
    assert pipeline_job.returncode == 0  # the champion it registered is what the app serves
    dashboard = cluster.dashboard_url
    serve_cli(cluster.env, "deploy", "--address", dashboard, str(replicated_ab_config(tmp_path, replicas=2)))
    try:
        url = f"http://127.0.0.1:{SERVE_PORT}"
        schema = wait_until(lambda: _get(f"{url}/schema"), timeout=300, what="the A/B app")["schema"]
        row = {name: 0.1 for name in schema["numeric"]}
        row.update({name: values[0] for name, values in schema["categorical"].items()})
        wait_until(lambda: len(app_replicas(dashboard)) == 6, timeout=120, what="six replicas")
        assert len({node for _, node, _ in app_replicas(dashboard)}) >= 2, app_replicas(dashboard)
        outcomes, before = serving_faults(cluster, row, f"{url}/predict")
        assert before and set(before) == {"200"}, sorted(set(before))
        print()
        for fault in outcomes:
            print(f"[fault] {fault.what} on {fault.node} under load (4 clients): {fault.sent} requests until the "
                  f"next fault, {len(fault.failed)} failed {sorted(set(fault.failed))}, all ok again "
                  f"{fault.recovered_s:.1f} s after the kill")
            assert fault.sent > 100, f"{fault.what}: the load stopped"
            # only what was in flight on the lost process, or on a keep-alive connection to the dead node's proxy,
            # may fail: a handful, then every request succeeds again within seconds
            assert len(fault.failed) <= 12 and fault.recovered_s < 20, fault
        # Serve replaced the lost replicas on the remaining nodes
        wait_until(lambda: len(app_replicas(dashboard)) == 6, timeout=180, what="the replicas replaced")
        assert outcomes[-1].node not in {node for _, node, _ in app_replicas(dashboard)}
    finally:
        serve_cli(cluster.env, "shutdown", "--address", dashboard, "-y")
        cluster.add_worker(CPUS_PER_NODE)  # the next test's node count


def _get(url: str) -> dict | None:
    try:
        answer = httpx.get(url, timeout=10)
        return answer.json() if answer.status_code == 200 else None
    except httpx.HTTPError:
        return None


def test_a_node_killed_mid_training_resumes_from_the_last_checkpoint(cluster, spec, pipeline_job):
    # killed after the first epoch: the five left outlast the second or two Ray takes to notice the loss
    fault = node_killed_mid_training(cluster, ["ray-app", "train", "--spec", str(spec), "--run-name",
                                               "killed-node-run"], after_epochs=1)
    print(f"\n[fault] node killed mid-training ({fault.node} after epoch {fault.killed_after} of 6): epochs "
          f"printed {fault.epochs}, {fault.redone} redone, finished {fault.finished_s:.0f} s after the kill; "
          f"workers on {fault.workers}")
    assert fault.status == "SUCCEEDED", fault.logs[-4000:]
    assert fault.epochs[-1] == 6 and set(fault.epochs) == set(range(1, 7)), fault.epochs
    # it resumed from a checkpoint at least as recent as the last epoch reported before the kill (never from
    # scratch); the epochs its workers finished while Ray had not yet noticed the loss are trained again
    assert fault.resumed_at is not None and fault.resumed_at >= fault.killed_after + 1, fault.epochs
    assert len(fault.workers) >= 4 and fault.node in fault.workers, fault.workers  # a new group after the loss
    # the first roc_auc each prints is the holdout's (`train` prints JSON, `pipeline` a line)
    killed, unkilled = (float(re.search(r"[\"']roc_auc[\"']: ([0-9.]+)", text).group(1))
                        for text in (fault.logs, pipeline_job.output))
    print(f"[fault] holdout roc_auc killed {killed:.4f} vs unkilled {unkilled:.4f} (same spec and seed)")
    assert abs(killed - unkilled) < 0.03, (killed, unkilled)
    cluster.add_worker(CPUS_PER_NODE)


def test_the_retrain_webhook_submits_its_job_to_the_cluster_and_it_reaches_a_verdict(cluster, spec, tmp_path,
                                                                                     pipeline_job):
    from ray.job_submission import JobSubmissionClient

    from ray_app.config import RuntimePaths
    from ray_app.loop import RetrainWebhook

    paths = RuntimePaths.resolve().model_copy(update={"dashboard_url": cluster.dashboard_url})
    webhook = RetrainWebhook(paths, spec=str(spec), folder=tmp_path / "webhook")
    alert = {"status": "firing", "fingerprint": "multinode", "startsAt": "2026-12-01T10:00:00Z",
             "labels": {"alertname": "FeatureDriftPersistent", "action": "retrain", "feature": "x0"}}
    status, body = webhook.handle({"alerts": [alert]})
    assert status == 202, body
    client = JobSubmissionClient(cluster.dashboard_url)
    wait_until(lambda: client.get_job_status(body["job_id"]).is_terminal(), timeout=600, interval=2,
               what="the retrain job to end")
    logs = client.get_job_logs(body["job_id"])
    assert VERDICT.search(logs), logs[-4000:]
    workers = actor_nodes(cluster.dashboard_url, client.get_job_info(body["job_id"]).job_id, "RayTrainWorker")
    assert len(set(workers)) == 2 and "head" not in workers, workers
