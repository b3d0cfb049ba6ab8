"""SparkSession construction with the settings stamps need (DESIGN.md §4).

A 3x101x101 float32 stamp is 122 KB, so Spark's default of 10,000 rows per Arrow batch would
be over 1 GB: ``spark.sql.execution.arrow.maxRecordsPerBatch`` is kept small.
"""

from __future__ import annotations

import os
import sys

ARROW_MAX_RECORDS_PER_BATCH = 256


def stamp_spark_conf(shuffle_partitions: int = 8) -> dict[str, str]:
    """Spark settings shared by local mode and EMR (launch.py writes the same ones)."""
    return {
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_MAX_RECORDS_PER_BATCH),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.sql.parquet.compression.codec": "zstd",
        "spark.task.maxFailures": "4",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        # 4c's workers move their stamp files into place themselves (jobs/stamp_writer.py): a
        # speculative copy that loses could still move files after the job has returned.
        "spark.speculation": "false",
    }


def local_spark_session(app_name: str = "dhs", master: str = "local[2]", shuffle_partitions: int = 4, extra_conf: dict | None = None):
    """A local-mode SparkSession bound to 127.0.0.1 whose Python workers run this interpreter.

    ``spark.task.maxFailures`` only counts in local mode through ``local[N, F]``; we use
    ``local[N,4]`` so a task that fails once is retried, as on YARN.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master.startswith("local[") and "," not in master:
        master = master[:-1] + ",4]"
    builder = SparkSession.builder.appName(app_name).master(master)
    conf = stamp_spark_conf(shuffle_partitions)
    conf.update(
        {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.driver.memory": "2g",
            "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
        }
    )
    conf.update(extra_conf or {})
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
