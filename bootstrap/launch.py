"""Launch the phase-4 pipeline on AWS EMR (emr-7.x: Spark 3.5, Amazon Linux 2023).

    python bootstrap/launch.py --config CONFIG.yaml --experiment-id ID --s3-root s3://BUCKET/dhs \\
        --parent-sample s3://.../parent.parquet --bricks-table s3://.../survey-bricks-dr10-south.fits.gz \\
        --coadd-root s3://.../coadd [--cosmos-library cosmos.h5] [--stages 4a,4c,4d] [--wait] [--dry-run]
    python bootstrap/launch.py ... --stages score --checkpoint best.pt [--score-input stamps|parent]

What it does, in order: build the code bundle (a pip-installable zip of setup.py + dhs_spark),
upload it with constraints.txt, the bootstrap script, the spark-submit entry point, the config
(with ``data.cosmos_library_path`` rewritten to the uploaded library) and the COSMOS library;
create the cluster (instance groups, release label, bootstrap action, log URI, Spark
configurations); add one step per stage from ``bootstrap/steps/phase4*.json`` (stage ``score``:
``steps/score_<score input>.json``, with the checkpoint uploaded, the trainer package in the
bundle and torch installed by the bootstrap); optionally wait,
with a bounded number of polls, and print a JSON report. ``--dry-run`` prints every request
instead and touches no AWS API (no credentials needed).

Step convention (the one used by every file in bootstrap/steps/): ``command-runner.jar`` with
``spark-submit`` as the first Arg (a step of Type Spark would take the Args WITHOUT it).
``${NAME}`` placeholders are filled by :func:`render_step`; a missing value is an error.

Python on the nodes: the bootstrap installs the pinned packages for python3.11 and the
``spark-env`` classification exports ``PYSPARK_PYTHON=/usr/bin/python3.11`` (AL2023's python3
is 3.9).
"""

from __future__ import annotations

import argparse
import io
import json
import string
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS_DIR = Path(__file__).resolve().parent / "steps"
BOOTSTRAP_SCRIPT = Path(__file__).resolve().parent / "install_deps.sh"
ENTRY_POINT = REPO / "emr" / "phase4_pipeline.py"
NODE_PYTHON = "/usr/bin/python3.11"
NUMBA_CACHE_DIR = "/tmp/numba_cache"
DEFAULT_RELEASE = "emr-7.12.0"
BUNDLE_NAME = "dark_halo_scope.zip"
ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same tree gives the same bundle bytes


@dataclass
class LaunchPlan:
    """Everything the launch will do: uploads (local path or bytes -> s3 URI), the cluster request
    and the step requests. :func:`execute` performs it; ``--dry-run`` prints it."""

    uploads: list[tuple[str, object]] = field(default_factory=list)
    run_job_flow: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "uploads": [{"uri": uri, "source": src if isinstance(src, str) else f"<{len(src)} bytes>"} for uri, src in self.uploads],
            "run_job_flow": self.run_job_flow,
            "add_job_flow_steps": self.steps,
        }


def build_bundle(repo: Path = REPO) -> bytes:
    """A pip-installable zip of the project (setup.py, README, constraints, dhs_spark/, trainer/), deterministic."""
    buf = io.BytesIO()
    files = [repo / "setup.py", repo / "constraints.txt"] + [p for p in [repo / "README.md"] if p.exists()]
    for package in ("dhs_spark", "trainer"):  # trainer: the score stage's model code
        files += sorted(p for p in (repo / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            info = zipfile.ZipInfo(str(path.relative_to(repo)), ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def render_step(template_path: Path, values: dict[str, str]) -> dict:
    """One step request from a JSON template; every ``${NAME}`` must have a value."""
    text = template_path.read_text()
    try:
        rendered = string.Template(text).substitute({k: json.dumps(str(v))[1:-1] for k, v in values.items()})
    except KeyError as exc:
        raise SystemExit(f"{template_path}: no value for placeholder {exc.args[0]} (pass the matching flag)") from None
    step = json.loads(rendered)
    args = step["HadoopJarStep"]["Args"]
    if step["HadoopJarStep"]["Jar"] != "command-runner.jar" or args[0] != "spark-submit":
        raise SystemExit(f"{template_path}: steps must use command-runner.jar with 'spark-submit' as the first Arg")
    return step


def step_template(stage: str, score_input: str = "stamps") -> Path:
    """The step JSON of ``stage``: ``phase<stage>.json``, or ``score_<score_input>.json`` for ``score``."""
    return STEPS_DIR / (f"score_{score_input}.json" if stage == "score" else f"phase{stage}.json")


def spark_configurations(executor_memory: str, executor_cores: int) -> list[dict]:
    """EMR configuration classifications: python3.11 for PySpark, numba cache, stamp settings."""
    from dhs_spark.spark_session import stamp_spark_conf

    env = {"PYSPARK_PYTHON": NODE_PYTHON, "PYSPARK_DRIVER_PYTHON": NODE_PYTHON, "NUMBA_CACHE_DIR": NUMBA_CACHE_DIR}
    defaults = dict(stamp_spark_conf())
    defaults.update(
        {
            "spark.executor.memory": executor_memory,
            "spark.executor.cores": str(executor_cores),
            "spark.executorEnv.NUMBA_CACHE_DIR": NUMBA_CACHE_DIR,
            "spark.executorEnv.PYSPARK_PYTHON": NODE_PYTHON,
            "spark.yarn.appMasterEnv.PYSPARK_PYTHON": NODE_PYTHON,
            "spark.python.worker.reuse": "true",
            "spark.dynamicAllocation.enabled": "true",
        }
    )
    return [
        {"Classification": "spark-env", "Properties": {}, "Configurations": [{"Classification": "export", "Properties": env}]},
        {"Classification": "spark-defaults", "Properties": defaults},
    ]


def plan_launch(args: argparse.Namespace) -> LaunchPlan:
    """The uploads, cluster request and steps for ``args`` (pure: no AWS call)."""
    import yaml

    root = args.s3_root.rstrip("/")
    code = f"{root}/code/{args.experiment_id}"
    plan = LaunchPlan()
    plan.uploads += [
        (f"{code}/{BUNDLE_NAME}", build_bundle()),
        (f"{code}/constraints.txt", str(REPO / "constraints.txt")),
        (f"{code}/install_deps.sh", str(BOOTSTRAP_SCRIPT)),
        (f"{code}/phase4_pipeline.py", str(ENTRY_POINT)),
    ]
    config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    if args.cosmos_library:
        lib_uri = f"{root}/cosmos/{Path(args.cosmos_library).name}"
        plan.uploads.append((lib_uri, str(Path(args.cosmos_library).resolve())))
        config.setdefault("data", {})["cosmos_library_path"] = lib_uri
    stages = args.stages.split(",")
    checkpoint_uri = None
    if "score" in stages:
        if not args.checkpoint:
            raise SystemExit("--stages score needs --checkpoint (a dhs-train best.pt: a local file to upload, or an s3:// URI)")
        checkpoint_uri = args.checkpoint
        if not args.checkpoint.startswith("s3://"):
            local = Path(args.checkpoint)
            if not local.is_file():
                raise SystemExit(f"--checkpoint {args.checkpoint}: no such file")
            checkpoint_uri = f"{code}/checkpoint/{local.name}"
            plan.uploads.append((checkpoint_uri, str(local.resolve())))
    config_uri = f"{code}/config.yaml"
    plan.uploads.append((config_uri, yaml.safe_dump(config, sort_keys=False).encode()))

    instance_groups = [
        {"Name": "master", "InstanceRole": "MASTER", "Market": "ON_DEMAND", "InstanceType": args.master_type, "InstanceCount": 1},
        {"Name": "core", "InstanceRole": "CORE", "Market": args.core_market, "InstanceType": args.core_type, "InstanceCount": args.core_count},
    ]
    instances = {"InstanceGroups": instance_groups, "KeepJobFlowAliveWhenNoSteps": bool(args.keep_alive), "TerminationProtected": False}
    if args.subnet_id:
        instances["Ec2SubnetId"] = args.subnet_id
    if args.ec2_key_name:
        instances["Ec2KeyName"] = args.ec2_key_name
    plan.run_job_flow = {
        "Name": args.cluster_name or f"dhs-phase4-{args.experiment_id}",
        "ReleaseLabel": args.release_label,
        "LogUri": args.log_uri or f"{root}/logs/",
        "Applications": [{"Name": "Spark"}, {"Name": "Hadoop"}],
        "Instances": instances,
        "BootstrapActions": [
            {
                "Name": "dhs install python3.11 deps",
                "ScriptBootstrapAction": {"Path": f"{code}/install_deps.sh", "Args": [f"{code}/constraints.txt", f"{code}/{BUNDLE_NAME}"]
                                          + (["torch"] if checkpoint_uri else [])},  # fmt: skip
            }
        ],
        "Configurations": spark_configurations(args.executor_memory, args.executor_cores),
        "JobFlowRole": args.job_flow_role,
        "ServiceRole": args.service_role,
        "VisibleToAllUsers": True,
        "Tags": [{"Key": "project", "Value": "dark-halo-scope"}, {"Key": "experiment_id", "Value": args.experiment_id}],
    }
    values = {
        "CODE_URI": code,
        "CONFIG_URI": config_uri,
        "EXPERIMENT_ID": args.experiment_id,
        "OUTPUT_ROOT": f"{root}/experiments",
        "TIER": args.tier,
    }
    optional = {"PARENT_SAMPLE_URI": args.parent_sample, "BRICKS_TABLE_URI": args.bricks_table, "COADD_ROOT_URI": args.coadd_root, "CHECKPOINT_URI": checkpoint_uri}
    values.update({k: v for k, v in optional.items() if v})
    plan.steps = [render_step(step_template(stage, args.score_input), values) for stage in stages]
    return plan


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise SystemExit(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def execute(plan: LaunchPlan, region: str, endpoint_url: str | None = None, wait: bool = False, poll_s: float = 30.0, max_polls: int = 960) -> dict:
    """Upload, create the cluster, add the steps; with ``wait`` poll the steps (bounded) until
    each is COMPLETED, FAILED or CANCELLED. Returns a report dict."""
    import boto3

    s3 = boto3.client("s3", region_name=region, endpoint_url=endpoint_url)
    emr = boto3.client("emr", region_name=region, endpoint_url=endpoint_url)
    for uri, src in plan.uploads:
        bucket, key = _split_s3(uri)
        if isinstance(src, bytes):
            s3.put_object(Bucket=bucket, Key=key, Body=src)
        else:
            s3.upload_file(src, bucket, key)
    cluster_id = emr.run_job_flow(**plan.run_job_flow)["JobFlowId"]
    step_ids = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=plan.steps)["StepIds"]
    report = {"cluster_id": cluster_id, "step_ids": step_ids, "log_uri": plan.run_job_flow["LogUri"], "uploaded": [u for u, _ in plan.uploads]}
    states = {}
    for poll in range(max_polls if wait else 1):
        states = {sid: emr.describe_step(ClusterId=cluster_id, StepId=sid)["Step"]["Status"]["State"] for sid in step_ids}
        if all(s in ("COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED") for s in states.values()):
            break
        if wait and poll + 1 < max_polls:
            time.sleep(poll_s)
    report["step_states"] = states
    report["finished"] = all(s in ("COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED") for s in states.values())
    report["succeeded"] = all(s == "COMPLETED" for s in states.values())
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="experiment YAML uploaded for the steps")
    p.add_argument("--experiment-id", required=True)
    p.add_argument("--s3-root", required=True, help="s3://bucket/prefix for code, config, library, outputs and logs")
    p.add_argument("--parent-sample", help="s3 URI of the parent sample (4a)")
    p.add_argument("--bricks-table", help="s3 URI of the bricks table (4a)")
    p.add_argument("--coadd-root", help="s3 URI of the brick coadds (4c)")
    p.add_argument("--cosmos-library", help="local COSMOS HDF5 library to upload (sets data.cosmos_library_path)")
    p.add_argument("--stages", default="4a,4c,4d", help="comma-separated stages, in order (4a, 4c, 4d, score)")
    p.add_argument("--checkpoint", help="score: dhs-train checkpoint (best.pt), a local file (uploaded to <s3-root>/code/<id>/checkpoint/) or an s3:// URI")
    p.add_argument("--score-input", default="stamps", choices=["stamps", "parent"],
                   help="score: the experiment's 4c stamps, or the parent sample cut from --coadd-root (needs --parent-sample, --bricks-table)")  # fmt: skip
    p.add_argument("--tier", default="train", choices=["debug", "grid", "train"])
    p.add_argument("--release-label", default=DEFAULT_RELEASE, help="emr-7.x (Spark 3.5)")
    p.add_argument("--cluster-name")
    p.add_argument("--log-uri", help="default: <s3-root>/logs/")
    p.add_argument("--master-type", default="m6i.xlarge")
    p.add_argument("--core-type", default="c6i.4xlarge")
    p.add_argument("--core-count", type=int, default=4)
    p.add_argument("--core-market", default="SPOT", choices=["ON_DEMAND", "SPOT"])
    p.add_argument("--executor-memory", default="6g")
    p.add_argument("--executor-cores", type=int, default=4)
    p.add_argument("--service-role", default="EMR_DefaultRole")
    p.add_argument("--job-flow-role", default="EMR_EC2_DefaultRole")
    p.add_argument("--subnet-id")
    p.add_argument("--ec2-key-name")
    p.add_argument("--keep-alive", action="store_true", help="keep the cluster after the steps")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--endpoint-url", help="AWS endpoint override (tests: a local moto server)")
    p.add_argument("--wait", action="store_true", help="poll the steps until they finish")
    p.add_argument("--poll-seconds", type=float, default=30.0)
    p.add_argument("--max-polls", type=int, default=960, help="bound on --wait polls")
    p.add_argument("--dry-run", action="store_true", help="print the requests; call no AWS API")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = plan_launch(args)
    if args.dry_run:
        print(json.dumps(plan.describe(), indent=2))
        return 0
    report = execute(plan, args.region, args.endpoint_url, args.wait, args.poll_seconds, args.max_polls)
    print(json.dumps(report, indent=2))
    return 0 if report["succeeded"] or not args.wait else 1


if __name__ == "__main__":
    sys.exit(main())
