"""bootstrap/launch.py against moto's EMR and S3 served on 127.0.0.1 (ThreadedMotoServer).

The assertions read back what the server recorded (cluster, instance groups, bootstrap action,
configurations, steps, uploaded objects), not what the launcher meant to send.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_launch():
    spec = importlib.util.spec_from_file_location("dhs_launch", REPO / "bootstrap" / "launch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


launch = _load_launch()


def _clients(endpoint):
    import boto3

    return boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint), boto3.client("emr", region_name="us-east-1", endpoint_url=endpoint)


ARGS = [
    "--experiment-id", "exp42",
    "--s3-root", "s3://dhs-bucket/runs",
    "--parent-sample", "s3://dhs-bucket/in/parent.parquet",
    "--bricks-table", "s3://dhs-bucket/in/survey-bricks-dr10-south.fits.gz",
    "--coadd-root", "s3://dhs-bucket/in/coadd",
    "--core-count", "3",
    "--executor-memory", "7g",
]  # fmt: skip


def test_launch_records_cluster_steps_and_uploads(moto_endpoint, tmp_path, capsys):
    s3, emr = _clients(moto_endpoint)
    s3.create_bucket(Bucket="dhs-bucket")
    library = tmp_path / "cosmos_lib.h5"
    library.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)))
    config = tmp_path / "exp.yaml"
    config.write_text("experiment_name: t\ndata:\n  source_mode: cosmos\n")

    rc = launch.main([*ARGS, "--config", str(config), "--cosmos-library", str(library), "--endpoint-url", moto_endpoint, "--region", "us-east-1"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)

    (cluster_summary,) = emr.list_clusters()["Clusters"]
    assert cluster_summary["Id"] == report["cluster_id"]
    cluster = emr.describe_cluster(ClusterId=report["cluster_id"])["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.12.0"
    assert cluster["LogUri"] == "s3://dhs-bucket/runs/logs/"
    assert {a["Name"] for a in cluster["Applications"]} >= {"Spark"}
    confs = {c["Classification"]: c for c in cluster["Configurations"]}
    env = confs["spark-env"]["Configurations"][0]
    assert env["Classification"] == "export" and env["Properties"]["PYSPARK_PYTHON"] == "/usr/bin/python3.11"
    assert env["Properties"]["NUMBA_CACHE_DIR"] == "/tmp/numba_cache"
    defaults = confs["spark-defaults"]["Properties"]
    assert int(defaults["spark.sql.execution.arrow.maxRecordsPerBatch"]) <= 1024, "Arrow batches of stamps must stay small"
    assert defaults["spark.executor.memory"] == "7g"

    groups = {g["InstanceGroupType"]: g for g in emr.list_instance_groups(ClusterId=report["cluster_id"])["InstanceGroups"]}
    assert groups["MASTER"]["RequestedInstanceCount"] == 1
    assert groups["CORE"]["RequestedInstanceCount"] == 3 and groups["CORE"]["InstanceType"] == "c6i.4xlarge"

    (action,) = emr.list_bootstrap_actions(ClusterId=report["cluster_id"])["BootstrapActions"]
    assert action["ScriptPath"] == "s3://dhs-bucket/runs/code/exp42/install_deps.sh"
    assert action["Args"] == ["s3://dhs-bucket/runs/code/exp42/constraints.txt", "s3://dhs-bucket/runs/code/exp42/dark_halo_scope.zip"]

    steps = emr.list_steps(ClusterId=report["cluster_id"])["Steps"]
    assert len(steps) == 3
    by_stage = {}
    for step in steps:
        args = step["Config"]["Args"]
        assert step["Config"]["Jar"] == "command-runner.jar"
        assert args[0] == "spark-submit", "command-runner.jar steps must start with spark-submit"
        assert not any("${" in a for a in args), f"unfilled placeholder in {args}"
        by_stage[args[args.index("--stage") + 1]] = args
    assert set(by_stage) == {"4a", "4c", "4d"}
    for args in by_stage.values():
        assert "s3://dhs-bucket/runs/code/exp42/phase4_pipeline.py" in args
        assert args[args.index("--experiment-id") + 1] == "exp42"
        assert args[args.index("--config") + 1] == "s3://dhs-bucket/runs/code/exp42/config.yaml"
    assert by_stage["4a"][by_stage["4a"].index("--bricks-table") + 1] == "s3://dhs-bucket/in/survey-bricks-dr10-south.fits.gz"
    assert by_stage["4c"][by_stage["4c"].index("--coadd-root") + 1] == "s3://dhs-bucket/in/coadd"

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="dhs-bucket")["Contents"]}
    code = "runs/code/exp42/"
    assert {code + n for n in ("dark_halo_scope.zip", "constraints.txt", "install_deps.sh", "phase4_pipeline.py", "config.yaml")} <= keys
    assert s3.get_object(Bucket="dhs-bucket", Key="runs/cosmos/cosmos_lib.h5")["Body"].read() == library.read_bytes()
    uploaded_cfg = s3.get_object(Bucket="dhs-bucket", Key=code + "config.yaml")["Body"].read().decode()
    assert "cosmos_library_path: s3://dhs-bucket/runs/cosmos/cosmos_lib.h5" in uploaded_cfg
    bundle = s3.get_object(Bucket="dhs-bucket", Key=code + "dark_halo_scope.zip")["Body"].read()
    assert bundle == launch.build_bundle(), "the bundle is deterministic and is what was uploaded"


def test_wait_is_bounded_and_reports_unfinished_steps(moto_endpoint):
    s3, _ = _clients(moto_endpoint)
    s3.create_bucket(Bucket="dhs-bucket")
    plan = launch.plan_launch(launch.build_parser().parse_args([*ARGS, "--stages", "4d"]))
    # moto never runs a step: it stays RUNNING, so the bounded wait must give up and say so.
    report = launch.execute(plan, "us-east-1", moto_endpoint, wait=True, poll_s=0.0, max_polls=3)
    assert report["finished"] is False and report["succeeded"] is False
    assert list(report["step_states"].values()) == ["RUNNING"]


def test_dry_run_calls_nothing_and_prints_requests(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # any AWS call would fail loudly
    assert launch.main([*ARGS, "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_job_flow"]["ReleaseLabel"].startswith("emr-7.")
    assert [s["HadoopJarStep"]["Args"][s["HadoopJarStep"]["Args"].index("--stage") + 1] for s in out["add_job_flow_steps"]] == ["4a", "4c", "4d"]


def test_missing_placeholder_value_is_an_error():
    args = launch.build_parser().parse_args(["--experiment-id", "e", "--s3-root", "s3://b/x", "--stages", "4c"])
    with pytest.raises(SystemExit, match="COADD_ROOT_URI"):
        launch.plan_launch(args)


def test_step_templates_follow_one_convention():
    """Every step JSON: command-runner.jar, 'spark-submit' first, the entry point, its stage."""
    for stage in ("4a", "4c", "4d"):
        step = json.loads((REPO / "bootstrap" / "steps" / f"phase{stage}.json").read_text())
        args = step["HadoopJarStep"]["Args"]
        assert step["HadoopJarStep"]["Jar"] == "command-runner.jar" and args[0] == "spark-submit"
        assert args[args.index("--stage") + 1] == stage
        assert any(a.endswith("/phase4_pipeline.py") for a in args)


def test_bootstrap_installs_pinned_packages_for_python311():
    script = (REPO / "bootstrap" / "install_deps.sh").read_text()
    subprocess.run(["bash", "-n", str(REPO / "bootstrap" / "install_deps.sh")], check=True)
    assert "PY=/usr/bin/python3.11" in script
    packages = shlex.split(re.search(r'^PACKAGES="([^"]+)"', script, re.M).group(1))
    pins = {line.split("==")[0].lower() for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line}
    assert set(packages) <= pins, f"unpinned bootstrap packages: {set(packages) - pins}"
    assert "pyspark" not in packages, "EMR provides Spark; a pip pyspark would shadow it"
    assert '-c "$WORK/constraints.txt"' in script


# -- the score step --------------------------------------------------------------------------------


def test_score_step_uploads_checkpoint_and_installs_torch(moto_endpoint, tmp_path, capsys):
    s3, emr = _clients(moto_endpoint)
    s3.create_bucket(Bucket="dhs-bucket")
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"PK\x03\x04 not really a checkpoint" + bytes(range(64)))
    rc = launch.main([*ARGS, "--stages", "4a,4c,score", "--checkpoint", str(ckpt), "--endpoint-url", moto_endpoint, "--region", "us-east-1"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    steps = emr.list_steps(ClusterId=report["cluster_id"])["Steps"]
    by_stage = {s["Config"]["Args"][s["Config"]["Args"].index("--stage") + 1]: s["Config"]["Args"] for s in steps}
    assert set(by_stage) == {"4a", "4c", "score"}
    score = by_stage["score"]
    assert score[0] == "spark-submit" and not any("${" in a for a in score)
    uploaded = "s3://dhs-bucket/runs/code/exp42/checkpoint/best.pt"
    assert score[score.index("--checkpoint") + 1] == uploaded and score[score.index("--score-input") + 1] == "stamps"
    assert score[score.index("--experiment-id") + 1] == "exp42" and "--resume" in score
    assert s3.get_object(Bucket="dhs-bucket", Key="runs/code/exp42/checkpoint/best.pt")["Body"].read() == ckpt.read_bytes()
    (action,) = emr.list_bootstrap_actions(ClusterId=report["cluster_id"])["BootstrapActions"]
    assert action["Args"][-1] == "torch", "a score step needs torch on the nodes"
    import io
    import zipfile

    bundle = s3.get_object(Bucket="dhs-bucket", Key="runs/code/exp42/dark_halo_scope.zip")["Body"].read()
    names = zipfile.ZipFile(io.BytesIO(bundle)).namelist()
    assert "trainer/score.py" in names and "dhs_spark/jobs/score_stage.py" in names


def test_parent_score_step_takes_4a_inputs_and_an_s3_checkpoint_as_is(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a dry run calls nothing
    ckpt = "s3://dhs-bucket/models/best.pt"
    assert launch.main([*ARGS, "--stages", "4a,score", "--checkpoint", ckpt, "--score-input", "parent", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    a4, score = (s["HadoopJarStep"]["Args"] for s in out["add_job_flow_steps"])
    assert score[score.index("--score-input") + 1] == "parent" and score[score.index("--checkpoint") + 1] == ckpt
    for flag in ("--parent-sample", "--bricks-table"):
        assert score[score.index(flag) + 1] == a4[a4.index(flag) + 1], f"the search set is 4a's {flag}"
    assert ("--select-lrg" in score) == ("--select-lrg" in a4), "the same LRG selection as 4a"
    assert score[score.index("--coadd-root") + 1] == "s3://dhs-bucket/in/coadd"
    assert not any(u["uri"].endswith("best.pt") for u in out["uploads"]), "an s3:// checkpoint is not uploaded again"
    assert out["run_job_flow"]["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"][-1] == "torch"


def test_score_step_without_checkpoint_is_an_error(tmp_path):
    args = launch.build_parser().parse_args([*ARGS, "--stages", "score"])
    with pytest.raises(SystemExit, match="--checkpoint"):
        launch.plan_launch(args)
    args = launch.build_parser().parse_args([*ARGS, "--stages", "score", "--checkpoint", str(tmp_path / "missing.pt")])
    with pytest.raises(SystemExit, match="missing.pt: no such file"):
        launch.plan_launch(args)


def test_no_score_step_no_torch_install():
    plan = launch.plan_launch(launch.build_parser().parse_args(ARGS))
    assert plan.run_job_flow["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"][-1].endswith(".zip")


def test_score_step_templates_follow_the_convention():
    for score_input in ("stamps", "parent"):
        step = json.loads(launch.step_template("score", score_input).read_text())
        args = step["HadoopJarStep"]["Args"]
        assert step["HadoopJarStep"]["Jar"] == "command-runner.jar" and args[0] == "spark-submit"
        assert args[args.index("--stage") + 1] == "score" and args[args.index("--score-input") + 1] == score_input
        assert args[args.index("--checkpoint") + 1] == "${CHECKPOINT_URI}"
        assert any(a.endswith("/phase4_pipeline.py") for a in args)
    script = (REPO / "bootstrap" / "install_deps.sh").read_text()
    score_packages = shlex.split(re.search(r'^SCORE_PACKAGES="([^"]+)"', script, re.M).group(1))
    pins = {line.split("==")[0].lower() for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line}
    assert "torch" in score_packages and set(score_packages) <= pins
