"""Shared fixtures: the one local SparkSession of a test run, and paths to real test data.

Real data lives in ``tests/data`` (copied from ../shared/data with licences, see
tests/data/README.md). ``SHARED_DATA`` points at ../shared/data for the few tests that need
files too large to copy; those tests fail loudly, never skip, when it is missing in CI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running cases, run by `make bench` / `pytest -m slow`")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Spark's Python workers must run this interpreter (the venv's), not the system python3.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".pytest_cache" / "numba"))


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TEST_DATA


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for the whole run, bound to 127.0.0.1."""
    from dhs_spark.spark_session import local_spark_session

    session = local_spark_session(app_name="dhs-tests", master="local[2]")
    yield session
    session.stop()


@pytest.fixture()
def moto_endpoint(monkeypatch):
    """moto's AWS APIs (S3, EMR, ...) served on 127.0.0.1 at a free port, with fake credentials;
    yields the endpoint URL. boto3 clients made without an endpoint reach it too
    (AWS_ENDPOINT_URL), so code under test needs no test hook to find it."""
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    yield endpoint
    server.stop()
