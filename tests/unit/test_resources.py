"""Resource checks before a stage's work: never fits -> at once; held by others -> wait, then one error line."""

import pytest

from ray_app.config import ExperimentConfig
from ray_app.resources import ClusterView, Need, ResourcesUnavailable, require, training_need

NEED = Need("training (2 workers x 1 CPU + 1 CPU for Ray Data)", {"CPU": 3.0, "GPU": 0.0})


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_training_run_needs_its_workers_and_a_cpu_for_ray_data():
    cfg = ExperimentConfig().with_overrides(train={"num_workers": 3, "cpus_per_worker": 0.5})
    need = training_need(cfg)
    assert need.resources == {"CPU": 2.5, "GPU": 0.0}
    assert need.what == "training (3 workers x 0.5 CPU + 1 CPU for Ray Data)"
    tuning = training_need(cfg.with_overrides(train={"use_gpu": True}, tune={"trial_cpus": 0.5}), "tuning")
    assert tuning.resources == {"CPU": 3.0, "GPU": 3.0} and "0.5 CPU for the trial" in tuning.what


def test_a_need_larger_than_the_cluster_stops_at_once():
    clock, views = FakeClock(), []

    def view():
        views.append(1)
        return ClusterView({"CPU": 2.0}, {"CPU": 2.0})

    with pytest.raises(ResourcesUnavailable) as caught:
        require(NEED, wait_s=300, view=view, clock=clock, sleep=clock.sleep, log=lambda line: None)
    assert len(views) == 1 and clock.now == 0
    assert str(caught.value) == ("training (2 workers x 1 CPU + 1 CPU for Ray Data) needs 3 CPU; the cluster has "
                                 "2 CPU, 2 CPU free: lower train.num_workers or train.cpus_per_worker "
                                 "(--set train.num_workers=1), or run on a larger cluster")


def test_resources_held_by_a_serve_app_are_waited_for_then_named():
    clock, lines = FakeClock(), []
    held = ClusterView({"CPU": 4.0}, {"CPU": 0.65}, {"Serve app `ab`": 1.35, "job 03000000": 2.0})
    with pytest.raises(ResourcesUnavailable) as caught:
        require(NEED, wait_s=60, view=lambda: held, clock=clock, sleep=clock.sleep, log=lines.append, poll_s=2)
    message = str(caught.value)
    assert message.startswith("waited 60 s: training") and 60 <= clock.now <= 62
    assert "held by job 03000000 2 CPU, Serve app `ab` 1.35 CPU" in message and "`serve delete ab`" in message
    assert len(lines) == 2 and lines[0].startswith("[ray] waiting up to 60 s for resources: training")


def test_the_stage_starts_once_the_resources_are_freed():
    clock, lines = FakeClock(), []
    busy, free = ClusterView({"CPU": 4.0}, {"CPU": 1.0}, {"Serve app `ab`": 3.0}), ClusterView({"CPU": 4.0},
                                                                                                  {"CPU": 4.0})
    require(NEED, wait_s=60, view=lambda: busy if clock.now < 10 else free, clock=clock, sleep=clock.sleep,
            log=lines.append)
    assert 10 <= clock.now < 12 and len(lines) == 1


def test_an_autoscaler_that_may_grow_the_cluster_is_waited_for():
    clock = FakeClock()
    small = ClusterView({"CPU": 2.0}, {"CPU": 2.0}, ceiling={"CPU": 16.0})
    with pytest.raises(ResourcesUnavailable, match=r"waited 10 s: .*may grow it to 16 CPU"):
        require(NEED, wait_s=10, view=lambda: small, clock=clock, sleep=clock.sleep, log=lambda line: None)
    never = ClusterView({"CPU": 2.0}, {"CPU": 2.0}, ceiling={"CPU": 2.5})
    with pytest.raises(ResourcesUnavailable, match="run on a larger cluster"):
        require(NEED, wait_s=10, view=lambda: never, clock=clock, sleep=clock.sleep, log=lambda line: None)


def test_a_worker_larger_than_every_node_stops_at_once_though_the_cluster_total_fits():
    """Three nodes of 2 CPUs hold 6 CPUs, but a 3-CPU worker fits on none: its placement group would wait forever."""
    cfg = ExperimentConfig().with_overrides(train={"num_workers": 1, "cpus_per_worker": 3})
    need = training_need(cfg)
    assert need.worker == {"CPU": 3.0, "GPU": 0.0}
    clock = FakeClock()
    nodes = ClusterView({"CPU": 6.0}, {"CPU": 6.0}, largest_node={"CPU": 2.0, "GPU": 0.0})
    with pytest.raises(ResourcesUnavailable) as caught:
        require(need, wait_s=300, view=lambda: nodes, clock=clock, sleep=clock.sleep, log=lambda line: None)
    assert clock.now == 0
    assert "one worker needs 3 CPU on one node, and the largest node has 2 CPU" in str(caught.value)
    big_enough = ClusterView({"CPU": 6.0}, {"CPU": 6.0}, largest_node={"CPU": 3.0})
    require(need, wait_s=0, view=lambda: big_enough, clock=clock, sleep=clock.sleep, log=lambda line: None)
    # an autoscaler may add a larger node: waited for, not refused
    growing = ClusterView({"CPU": 6.0}, {"CPU": 6.0}, ceiling={"CPU": 64.0}, largest_node={"CPU": 2.0})
    require(need, wait_s=0, view=lambda: growing, clock=clock, sleep=clock.sleep, log=lambda line: None)
