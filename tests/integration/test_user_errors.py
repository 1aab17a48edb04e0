"""A corpus of user mistakes run through the CLI as a user would: bad files, specs, arguments and model URIs.
Each must end with exit 2, one `error:` line naming the problem, and no traceback (`--debug` shows one)."""

import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.messy import messy_table

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One file per kind of damage, next to a good table."""
    folder = tmp_path_factory.mktemp("bad-data")
    good = messy_table(400)
    made = {"good": folder / "good.parquet", "empty": folder / "empty.parquet", "truncated": folder / "cut.parquet",
            "text": folder / "notes.parquet", "ragged": folder / "ragged.csv", "one_class": folder / "one.parquet",
            "few": folder / "few.parquet", "header_only": folder / "header.csv", "no_data": folder / "nothing",
            "spec_types": folder / "spec.yaml", "dated": folder / "dated.parquet"}
    good.to_parquet(made["good"], index=False)
    made["empty"].write_bytes(b"")
    made["truncated"].write_bytes(made["good"].read_bytes()[:1500])
    made["text"].write_text("name,age\nann,3\n")
    csv = good.drop(columns=["signup_date"]).head(50).to_csv(index=False).splitlines()
    csv[30] += ",surprise"
    made["ragged"].write_text("\n".join(csv) + "\n")
    good.assign(plan="basic").to_parquet(made["one_class"], index=False)
    good.head(5).to_parquet(made["few"], index=False)
    made["header_only"].write_text("age,plan\n")
    made["no_data"].mkdir()
    (made["no_data"] / "readme.txt").write_text("no tables here")
    made["spec_types"].write_text("train:\n  epochs: many\n")
    good.to_parquet(made["dated"], index=False)
    return made


MESSY = ["--set", "data.label=plan", "--set", "data.exclude=[customer_id, signup_date]"]


def corpus(f: dict[str, Path], model: str) -> list[tuple[str, list[str], str]]:
    """(what, ray-app arguments, text the error line must contain)."""
    src = lambda key: ["--set", f"data.source={f[key]}"]  # noqa: E731
    return [
        ("missing file", ["ingest", *src("good"), "--set", "data.source=/no/such/table.parquet", *MESSY],
         "does not exist"),
        ("empty file", ["ingest", *src("empty"), *MESSY], "is not a readable Parquet file"),
        ("truncated Parquet", ["train", *src("truncated"), *MESSY], "cut.parquet is not a readable Parquet"),
        ("text named .parquet", ["validate", "--data", str(f["text"]), *MESSY], "notes.parquet"),
        ("CSV with a ragged row", ["ingest", *src("ragged"), *MESSY], "ragged.csv is not a readable CSV"),
        ("no tables in the folder", ["ingest", *src("no_data"), *MESSY], "expected Parquet or CSV files"),
        ("unknown label column", ["train", *src("good"), "--set", "data.label=churned"], "label column 'churned'"),
        ("label with one class", ["train", *src("one_class"), *MESSY], "has 1 class(es) (basic)"),
        ("too few rows", ["ingest", *src("few"), *MESSY], "too few to split"),
        ("header only", ["pipeline", *src("header_only"), "--set", "data.label=plan"], "too few to split"),
        ("a date column", ["train", *src("dated"), "--set", "data.label=plan", "--set", "data.exclude=[customer_id]"],
         "'signup_date' is a date/time"),
        ("exclude names no column", ["ingest", *src("good"), *MESSY, "--set", "data.exclude=[nope]"],
         "data.exclude names column(s) not in the data: nope"),
        ("spec with a wrong type", ["train", "--spec", str(f["spec_types"])], "epochs"),
        ("--set with a wrong type", ["tune", "--set", "train.lr=fast"], "lr"),
        ("--set of an unknown section", ["train", "--set", "trian.epochs=3"], "unknown section(s) trian"),
        ("spec file missing", ["pipeline", "--spec", "/no/such/spec.yaml"], "/no/such/spec.yaml"),
        ("model URI of no model", ["serve", "--model-uri", "models:/no-such-model@champion", "--detach"],
         "no-such-model"),
        ("model URI malformed", ["export", "--model-uri", "no-such-model", "--format", "onnx", "--output",
                                 str(f["no_data"] / "out")], "expected models:/<name>@<alias>"),
        ("predict with a missing input", ["predict", "--model-uri", model, "--input", "/no/such/rows.parquet",
                                          "--output", str(f["no_data"] / "scored")], "does not exist"),
        ("drift with a damaged file", ["drift", "--reference", str(f["good"]), "--current", str(f["truncated"])],
         "cut.parquet"),
        ("gate of a version that does not exist", ["gate", "--challenger", "models:/ray-app-model/999"], "999"),
    ]


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray-app"), *args], env=env, capture_output=True, text=True, timeout=300)


def test_every_mistake_is_one_error_line_without_a_traceback(files, champion, ray_cluster):
    model = f"models:/{champion.model.name}@champion"
    failures = []
    for what, args, text in corpus(files, model):
        done = run(args, ray_cluster["env"])
        output = done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        if done.returncode != 2 or len(errors) != 1 or text not in errors[0] or "Traceback" in output:
            failures.append(f"{what}: exit {done.returncode}, error lines {errors}, expected {text!r}\n"
                            f"{output[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert len(corpus(files, model)) >= 15


def test_debug_shows_the_traceback_of_a_mistake(files, ray_cluster):
    done = run(["ingest", "--debug", "--set", f"data.source={files['empty']}", *MESSY], ray_cluster["env"])
    assert done.returncode == 2 and "Traceback" in done.stderr and "error: " in done.stderr

