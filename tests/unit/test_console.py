"""The quiet console: a stage's own lines on the terminal; Ray's, MLflow's, native and worker output in its log."""

import logging
import os
import sys
import warnings
from pathlib import Path

from ray_app.console import PROGRESS, log_file_for, progress_line, quiet_console, quiet_loggers, route_worker_output


def test_progress_line_draws_the_share_of_epochs_done():
    line = progress_line("run-1", 4, 10, {"train_loss": 0.23456, "val_roc_auc": 0.97})
    assert line == f"{PROGRESS}run-1 [####------] 4/10 train_loss 0.2346 val_roc_auc 0.97"
    assert "[##########] 3/3" in progress_line("r", 3, 3, {})
    assert log_file_for("train", Path("/logs"), now=1).name == "train-19700101-000001.log"


def test_library_logs_warnings_and_native_stderr_go_to_the_file_and_come_back_after(tmp_path, capfd):
    log_file = tmp_path / "logs" / "stage.log"
    noisy = logging.getLogger("ray.test_console")
    terminal_handler = logging.StreamHandler(sys.stderr)  # as Ray's import leaves its loggers
    noisy.addHandler(terminal_handler)
    noisy.propagate = False
    try:
        with quiet_console(log_file):
            print("[stage] own line", file=sys.stderr)
            noisy.warning("ray internals")
            logging.getLogger("ray_app.test").warning("warning: ours")
            warnings.warn("a library's warning", FutureWarning, stacklevel=1)
            os.write(2, b"native core_worker line\n")
            assert terminal_handler not in noisy.handlers
        assert noisy.handlers == [terminal_handler]  # put back
        shown = capfd.readouterr().err
        os.write(2, b"after\n")
        assert capfd.readouterr().err == "after\n"
    finally:
        noisy.removeHandler(terminal_handler)
    assert "[stage] own line" in shown and "warning: ours" in shown
    assert "ray internals" not in shown and "native" not in shown and "a library's warning" not in shown
    kept = log_file.read_text()
    for text in ("ray internals", "warning: ours", "a library's warning", "native core_worker line"):
        assert text in kept, text
    assert all(getattr(h, "baseFilename", None) != str(log_file.resolve()) for h in logging.getLogger().handlers)


def test_quiet_loggers_moves_handlers_added_after_the_console_started(tmp_path):
    log_file = tmp_path / "stage.log"
    with quiet_console(log_file):
        late = logging.getLogger("ray.data.test_console")  # as `import ray.data` configures its logger later
        late.addHandler(logging.StreamHandler(sys.stderr))
        late.setLevel(logging.INFO)  # not the WARNING that connect_ray gives `ray.data` (earlier tests call it)
        late.propagate = False
        moved = quiet_loggers(log_file)
        assert [logger.name for logger, _ in moved] == ["ray.data.test_console"]
        late.info("ray data internals")
        late.handlers.clear()
    assert "ray data internals" in log_file.read_text()


def test_worker_output_goes_to_the_file_and_progress_lines_to_the_terminal(tmp_path, capsys):
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    log_file = tmp_path / "stage.log"
    route_worker_output(log_file)
    try:
        dispatcher.emit({"lines": ["Reporting training result 1", f"{PROGRESS}run [#---------] 1/10 x 1"],
                         "pid": 7, "actor_name": "RayTrainWorker", "is_err": False})
        dispatcher.emit({"lines": [f"{PROGRESS}run [#---------] 1/10 x 1"], "pid": 7, "is_err": True})
    finally:
        dispatcher.remove_handler("ray_app_console")
    assert capsys.readouterr().out == "run [#---------] 1/10 x 1\n"  # once: Ray Train copies stdout to stderr
    kept = log_file.read_text()
    assert "(RayTrainWorker pid=7) Reporting training result 1" in kept and kept.count("1/10") == 2
