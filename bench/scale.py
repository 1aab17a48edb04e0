"""The data plane at scale: each CLI stage on N generated rows, with wall time and peak memory of the driver and of
its whole process tree (the private Ray it starts included), next to pandas reading the same files in the same run.

    python bench/scale.py --rows 1000000 [--rows 10000000] [--out bench/out/scale]

With `--before PATH` (a checkout of an earlier commit) every stage also runs with that code, on the same files.
For every row count: N rows x 20 features (14 numeric, 6 categorical) written as Parquet files of 250k rows, plus a
drifted set of N/10 rows; then `validate`, `train` (1 epoch, 2 workers), `gate`, `predict` and `drift`, each a fresh
`ray-app ... --local` process as a user would run it. The last column is each figure against the first row count's.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
FILE_ROWS = 250_000
SPEC = """name: scale
data: {{source: {data}, label: label, task: classification}}
train: {{epochs: 1, num_workers: 2, batch_size: 1024}}
gate: {{bootstrap_samples: 200}}
"""
PANDAS = """import sys, pandas as pd
frame = pd.read_parquet(sys.argv[1])
frame.describe(include="all")
frame["label"].value_counts()
"""


def generate(folder: Path, rows: int, shift: float = 0.0, seed: int = 0) -> Path:
    """Write `rows` rows x 20 features as Parquet files of FILE_ROWS rows (seeded; a numeric `shift` drifts them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, rows, FILE_ROWS)):
        n = min(FILE_ROWS, rows - start)
        rng = np.random.default_rng([seed, part])
        numeric = rng.normal(loc=shift, size=(n, 14))
        frame = pd.DataFrame(numeric, columns=[f"x{i}" for i in range(14)])
        for j in range(6):
            frame[f"c{j}"] = rng.choice([f"v{k}" for k in range(3 + 2 * j)], size=n)
        logit = 1.2 * numeric[:, 0] - numeric[:, 1] + 0.5 * numeric[:, 2] * numeric[:, 3] + (frame["c0"] == "v1") * 0.8
        frame["label"] = (logit + rng.normal(scale=0.5, size=n) > 0).astype("int64")
        frame.to_parquet(folder / f"part-{part:05d}.parquet", index=False)
    return folder


@dataclass
class Sample:
    seconds: float
    driver_gb: float
    tree_gb: float
    code: int
    spilled_mib: int = 0
    profiled_rows_s: float | None = None  # validate: rows over the profiling pass's seconds, from its report line


def profiling_rate(log: Path) -> float | None:
    """Rows per second of the data gate's profiling pass, from the line `ray-app validate` prints:
    "data gate: <source> (N rows, profiled in S s): ..."."""
    found = re.search(r"\((\d+) rows, profiled in ([\d.]+) s\)", log.read_text(errors="replace"))
    return int(found.group(1)) / float(found.group(2)) if found and float(found.group(2)) > 0 else None


def spilled_mib(log: Path, home_logs: Path, since: float) -> int:
    """The most the object store said it had spilled ("Spilled N MiB, ..." lines of Ray's in the stage's output,
    or in the stage's own log under `$RAY_APP_HOME/logs`, where the console keeps Ray's output)."""
    texts = [log.read_text(errors="replace")]
    texts += [f.read_text(errors="replace") for f in home_logs.glob("*.log") if f.stat().st_mtime >= since]
    found = [int(m) for text in texts for m in re.findall(r"Spilled (\d+) MiB", text)]
    return max(found, default=0)


def run_measured(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> Sample:
    """Run a command, polling the RSS of it and of all its descendants every 0.2 s; the peaks in GB."""
    start, started_at = time.perf_counter(), time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        root = psutil.Process(proc.pid)
        driver_peak = tree_peak = 0
        while proc.poll() is None:
            try:
                driver = root.memory_info().rss
                tree = driver + sum(_rss(child) for child in root.children(recursive=True))
            except psutil.NoSuchProcess:
                break
            driver_peak, tree_peak = max(driver_peak, driver), max(tree_peak, tree)
            time.sleep(0.2)
        code = proc.wait()
    home_logs = Path(env.get("RAY_APP_HOME", log.parent)) / "logs"
    return Sample(time.perf_counter() - start, driver_peak / 1e9, tree_peak / 1e9, code,
                  spilled_mib(log, home_logs, started_at))


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def stages(work: Path, data: Path, drifted: Path, tag: str) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "ray_app.cli"]
    spec = ["--spec", str(work / "spec.yaml"), "--local"]
    return {
        "validate": [*cli, "validate", *spec],
        "train (1 epoch)": [*cli, "train", *spec, "--alias", "challenger"],
        "gate": [*cli, "gate", *spec, "--challenger", "models:/ray-app-model@challenger"],
        "predict": [*cli, "predict", *spec, "--model-uri", "models:/ray-app-model/1", "--input",
                    str(drifted), "--output", str(work / f"scored-{tag}")],
        "drift": [*cli, "drift", *spec, "--reference", str(data), "--current", str(drifted), "--output",
                  str(work / f"drift-{tag}")],
    }


def bench(rows: int, out: Path, trees: dict[str, Path], only: list[str] | None = None,
          reuse_data: bool = False) -> dict[str, Sample]:
    """pandas, then every stage (or those in `only`) with the code of each tree (this one: "now"; `--before`:
    "before"). With `reuse_data`, files generated by an earlier run of the same row count are kept."""
    work = out / f"rows-{rows}"
    if reuse_data and (work / "data").exists() and (work / "drifted").exists():
        for stale in [*work.glob("home-*"), *work.glob("scored-*"), *work.glob("drift-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        data, drifted = work / "data", work / "drifted"
    else:
        shutil.rmtree(work, ignore_errors=True)
        data, drifted = generate(work / "data", rows), generate(work / "drifted", max(rows // 10, 1000), 0.5, seed=1)
    (work / "spec.yaml").write_text(SPEC.format(data=data))
    results = {"pandas read + describe": run_measured([sys.executable, "-c", PANDAS, str(data)], dict(os.environ),
                                                      work / "pandas.log")}
    for tag, tree in trees.items():
        env = {**os.environ, "RAY_APP_HOME": str(work / f"home-{tag}"), "RAY_APP_LOCAL_RAY": "1",
               "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(tree)}  # and the tree as cwd: `-m` puts cwd first
        for name, cmd in stages(work, data, drifted, tag).items():
            if only and name.split()[0] not in only:
                continue
            key = f"{name} [{tag}]" if len(trees) > 1 else name
            log = work / f"{tag}-{name.split()[0]}.log"
            results[key] = sample = run_measured(cmd, env, log, cwd=tree)
            sample.profiled_rows_s = profiling_rate(log) if name == "validate" else None
            profiled = f"  profiled {sample.profiled_rows_s:,.0f} rows/s" if sample.profiled_rows_s else ""
            print(f"  {rows:>11,} rows  {key:<26} {sample.seconds:7.1f} s  driver {sample.driver_gb:.2f} GB  "
                  f"tree {sample.tree_gb:.2f} GB  spilled {sample.spilled_mib} MiB  exit {sample.code}{profiled}",
                  flush=True)
    return results


def profiling_speed(data: Path) -> dict[tuple[str, bool], float]:
    """Rows/s of one core turning one generated file into the data gate's view (20 features + label) and profiling
    it, and profiling its 14 numeric columns alone: with the adapter's speed-ups and with whylogs' own code (the
    baseline). Best of three each."""
    from ray_app.data.sources import FeatureSpec
    from ray_app.data.validate import GateColumns, gate_view
    from ray_app.profiles import profile_frame, whylogs_own_code

    frame = pd.read_parquet(next(data.glob("*.parquet")))
    spec = FeatureSpec(label="label", numeric=[f"x{i}" for i in range(14)], categorical=[f"c{j}" for j in range(6)],
                       task="classification")
    columns = GateColumns.of(spec, None, {c: str(t) for c, t in frame.dtypes.items()})
    work = {"gate view": lambda: profile_frame(gate_view(frame, columns)[0], cardinality=False),
            "numeric only": lambda: profile_frame(frame[[f"x{i}" for i in range(14)]])}

    def best(run) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return len(frame) / min(times)

    rates = {(kind, True): best(run) for kind, run in work.items()}
    with whylogs_own_code():
        rates.update({(kind, False): best(run) for kind, run in work.items()})
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="row count (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "scale")
    parser.add_argument("--before", type=Path, help="another checkout of this repo: its stages run too, as 'before'")
    parser.add_argument("--stage", action="append", choices=["validate", "train", "gate", "predict", "drift"],
                        help="run only these stages (repeatable; gate and predict need train's model)")
    parser.add_argument("--reuse-data", action="store_true", help="keep the files an earlier run generated")
    args = parser.parse_args()
    counts = args.rows or [1_000_000]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    trees = {"now": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    table = {rows: bench(rows, args.out, trees, args.stage, args.reuse_data) for rows in counts}
    rates = profiling_speed(args.out / f"rows-{counts[0]}" / "data")
    for kind in ("gate view", "numeric only"):
        fast, slow = rates[kind, True], rates[kind, False]
        print(f"profiling on one core, {kind}: {fast:,.0f} rows/s with the adapter's speed-ups, {slow:,.0f} rows/s "
              f"with whylogs' own code ({fast / slow:.1f}x)")
    first = table[counts[0]]
    print(f"\n| rows | stage | wall s | driver peak RSS GB | process tree peak RSS GB | spilled MiB | exit | "
          f"driver vs {counts[0]:,} rows | data gate profiling, rows/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows, results in table.items():
        for name, s in results.items():
            ratio = s.driver_gb / first[name].driver_gb if first[name].driver_gb else float("nan")
            profiled = f"{s.profiled_rows_s:,.0f}" if s.profiled_rows_s else ""
            print(f"| {rows:,} | {name} | {s.seconds:.1f} | {s.driver_gb:.2f} | {s.tree_gb:.2f} | "
                  f"{s.spilled_mib} | {s.code} | {ratio:.2f}x | {profiled} |")


if __name__ == "__main__":
    main()
