"""The operator's console: a stage prints its own lines (what it does, its result, training progress) and sends
everything else to `$RAY_APP_HOME/logs/<stage>-<time>.log`: the logs of Ray, Ray Data and MLflow, Python's
warnings, native stderr (Ray's core worker), and the output of every Ray worker (trainers, Data tasks, replicas)
that Ray forwards to the driver. `--verbose` leaves all of it on the terminal, as Ray prints it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROGRESS = "[progress] "  # a worker's line that the quiet console shows (training epochs)
_NOISY = {"ray", "mlflow", "alembic", "sqlalchemy", "urllib3", "filelock", "py"}  # top-level logger names
_ROUTER = "ray_app_console"  # our handler's name in Ray's dispatcher of worker output
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file_for(stage: str, logs_dir: Path, now: float | None = None) -> Path:
    """`<logs_dir>/<stage>-<UTC time>.log` (a second run in the same second appends to the same file)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now or time.time()))
    return logs_dir / f"{stage}-{stamp}.log"


def progress_line(run: str, epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """One epoch as the quiet console shows it: `[progress] <run> [####------] 4/10 train_loss 0.231 ...`."""
    width = 10
    done = round(width * epoch / max(epochs, 1))
    figures = " ".join(f"{name} {value:.4g}" for name, value in metrics.items())
    return f"{PROGRESS}{run} [{'#' * done}{'-' * (width - done)}] {epoch}/{epochs} {figures}"


@contextmanager
def quiet_console(log_file: Path) -> Iterator[None]:
    """While the block runs: Python's logging (Ray's, MLflow's, the warnings) and native stderr (file descriptor 2,
    which child processes inherit) go to `log_file`; `sys.stderr` and ray_app's own warnings stay on the terminal.
    Everything is put back afterwards."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    added_env = [name for name in ("MLFLOW_CONFIGURE_LOGGING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
                 if name not in os.environ]
    for name in added_env:  # MLflow's loggers then propagate to the root's file; no artifact progress bars
        os.environ[name] = "false"
    sys.stderr.flush()
    saved_fd = os.dup(2)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    terminal = open(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    saved_stderr, sys.stderr = sys.stderr, terminal
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(_FORMAT))
    ours = logging.StreamHandler(terminal)
    ours.setLevel(logging.WARNING)
    ours.setFormatter(logging.Formatter("%(message)s"))
    root, own = logging.getLogger(), logging.getLogger("ray_app")
    saved_level = root.level
    root.addHandler(to_file)
    root.setLevel(logging.INFO)
    own.addHandler(ours)
    logging.captureWarnings(True)
    moved = quiet_loggers(log_file)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for logger, handler in moved:
            logger.removeHandler(to_file)
            logger.addHandler(handler)
        own.removeHandler(ours)
        root.removeHandler(to_file)
        root.setLevel(saved_level)
        to_file.close()
        sys.stderr = saved_stderr
        terminal.flush()  # not closed: a thread (Ray's log printer) may still hold it; it closes when collected
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        for name in added_env:
            os.environ.pop(name, None)


def quiet_loggers(log_file: Path) -> list[tuple[logging.Logger, logging.Handler]]:
    """Replace the terminal handlers that Ray, Ray Data and MLflow put on their loggers (at import: call again
    after importing them) with the root's handler for `log_file`; returns what was replaced."""
    target = str(log_file.resolve())
    to_file = next((h for h in logging.getLogger().handlers
                    if isinstance(h, logging.FileHandler) and h.baseFilename == target), None)
    moved = []
    if to_file is None:
        return moved
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name.split(".")[0] not in _NOISY:
            continue  # `ray_app` is ours: not `ray`
        for handler in [h for h in logger.handlers
                        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
            moved.append((logger, handler))
            if to_file not in logger.handlers:
                logger.addHandler(to_file)
    return moved


def route_worker_output(log_file: Path) -> None:
    """Once this process started or joined Ray: the worker output that Ray forwards to the driver goes to
    `log_file`, and progress lines (from the workers' stdout; Ray Train copies it to stderr) are printed."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher  # the one hook Ray offers

    sink = log_file.open("a", encoding="utf-8")

    def dispatch(batch: dict) -> None:
        who = batch.get("actor_name") or batch.get("task_name") or "worker"
        for line in batch.get("lines", []):
            sink.write(f"({who} pid={batch.get('pid')}) {line}\n")
            if line.startswith(PROGRESS) and not batch.get("is_err"):
                print(line[len(PROGRESS):], flush=True)
        sink.flush()

    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")  # Ray's: print everything, prefixed
    global_worker_stdstream_dispatcher.remove_handler(_ROUTER)
    global_worker_stdstream_dispatcher.add_handler(_ROUTER, dispatch)
