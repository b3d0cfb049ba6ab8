"""Test helper: a local coadd-psf HTTP server on 127.0.0.1 serving per-band PSF FITS made from the
real PsfEx models of brick 2447p120 (g, r, z CCDs in tests/data/decam_ccds), as the Legacy Survey
viewer's ``coadd-psf/`` endpoint would (one image HDU per band, header ``BAND``).

Used by tests/survey/test_psf_coadd.py (the client) and tests/jobs/test_phase4_psf.py (phase 4c).
tests/ is on ``sys.path`` through its rootdir conftest, so both import it as ``coadd_psf_server``.
"""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from astropy.io import fits

from dhs_spark.survey import psf

DATA = Path(__file__).resolve().parent / "data" / "decam_ccds"
TIMEOUT_S = 1.0  # the client timeout the tests use (an "ok" answer must come well within it on a loaded CI machine); 'sleep' answers after 3x this


def _real_psfs() -> dict[str, np.ndarray]:
    """One real PsfEx model per band, at its CCD centre: the coadd PSFs the server hands out."""
    out = {}
    for band, name in (("g", "c4d_150329_083505_ooi_g_ls9-N11"), ("r", "c4d_150329_083320_ooi_r_ls9-N11"), ("z", "c4d_150412_073257_ooi_z_ls9-N11")):
        path = next(DATA.glob(f"calib/psfex-single/**/{name}-psfex.fits"))
        out[band] = psf.psfex_image(path, *psf.load_psfex(str(path)).centre_xy).astype(np.float32)
    return out


PSFS = _real_psfs()


def fits_body(bands=("g", "r", "z"), bad_band=None) -> bytes:
    """A coadd-psf FITS body with ``bands`` (``bad_band``'s image gets a NaN pixel)."""
    hdus = [fits.PrimaryHDU()]
    for b in bands:
        data = PSFS[b].copy()
        if b == bad_band:
            data[5, 5] = np.nan
        hdu = fits.ImageHDU(data)
        hdu.header["BAND"] = b
        hdus.append(hdu)
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


class CoaddPsfServer:
    """A threaded HTTP server whose responses follow ``plan`` (one action per request, then 'ok'):
    'ok', '500', 'sleep' (answer after 3x the client timeout), 'garbage', 'truncated', 'no_z', 'nan_r'.

    ``by_brick`` maps a brickname to the action of every request at a position inside that brick
    (when ``plan`` is empty), for clients whose request order is not known (Spark workers).
    ``requests`` lists (path, params) of every request received.
    """

    def __init__(self):
        self.plan: list[str] = []
        self.by_brick: dict[str, str] = {}
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                with server.lock:
                    server.requests.append((url.path, params))
                    action = server.plan.pop(0) if server.plan else server.brick_action(params)
                if action == "500":
                    self.send_response(500)
                    self.end_headers()
                    return
                if action == "sleep":
                    time.sleep(3 * TIMEOUT_S)
                body = {
                    "garbage": b"<html>proxy error</html>",
                    "truncated": fits_body()[:3000],  # cut inside the first band HDU; Content-Length agrees
                    "no_z": fits_body(("g", "r")),
                    "nan_r": fits_body(bad_band="r"),
                }.get(action) or fits_body()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/fits")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/viewer"

    def brick_action(self, params: dict) -> str:
        if not self.by_brick or "ra" not in params:
            return "ok"
        from dhs_spark.survey.bricks import brickname_for

        brick = str(brickname_for(float(params["ra"]), float(params["dec"]))[0])
        return self.by_brick.get(brick, "ok")

    def requests_by_brick(self) -> dict[str, int]:
        """Requests received per brick (from each request's ra, dec)."""
        from dhs_spark.survey.bricks import brickname_for

        out: dict[str, int] = {}
        for _, params in self.requests:
            brick = str(brickname_for(float(params["ra"]), float(params["dec"]))[0])
            out[brick] = out.get(brick, 0) + 1
        return out

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
