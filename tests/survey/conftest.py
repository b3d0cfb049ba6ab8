"""Fixtures of the survey tests: a small mock survey, and a local fits-cutout server on 127.0.0.1
(see survey_test_helpers.py for what it serves and how it fails on demand)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer

import pytest
from survey_test_helpers import CutoutHandler, load_real_cutouts


@pytest.fixture(scope="session")
def mock_survey(tmp_path_factory):
    """Two 400-px mock bricks (built once per run)."""
    from dhs_spark.survey.mock import build_mock_survey

    return build_mock_survey(tmp_path_factory.mktemp("mock_survey"), n_bricks=2, brick_size_pix=400, seed=7, n_lrg_per_brick=6)


@pytest.fixture
def cutout_server():
    """A fits-cutout server on 127.0.0.1:<free port>; yields the server (``.base_url``, ``.plan``, ``.requests``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), CutoutHandler)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.plan = []
    server.requests = []
    server.stall_s = 3.0  # past the tests' 1 s client timeout
    server.cutouts = load_real_cutouts()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/viewer"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
