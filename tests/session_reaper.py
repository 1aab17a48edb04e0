"""Stops the test session's Ray cluster once the pytest process that started it is gone, however it ended: a
failure, an interrupt, a kill, or pytest-timeout's thread method (which exits without running teardown).

    python tests/session_reaper.py PYTEST_PID RAY_BINARY

Not named *monitor.py: `ray stop --force` kills every process whose command line contains that.
"""

import os
import subprocess
import sys
import time


def main() -> None:
    pid, ray = int(sys.argv[1]), sys.argv[2]
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(1)
    subprocess.run([ray, "stop", "--force"], timeout=180, capture_output=True)


if __name__ == "__main__":
    main()
