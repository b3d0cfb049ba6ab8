"""Helpers of the survey tests: the six real DR10 cutouts as the fits-cutout service would
serve them, and a local HTTP server on 127.0.0.1 that serves them and fails on demand.

FITS layout as the service's: HDU 0 the (3, N, N) grz cube with BANDS='grz'; HDU 1 (with
``invvar`` in the query) an invvar cube from each band's robust pixel noise. Queue modes in
``server.plan`` for the next requests: '500', 'timeout' (stall past the client timeout),
'truncated' (announce the full length, send half, hang up), 'short' (a consistently short
file), 'garbage' (not FITS), 'noband' (only g and r).
"""

from __future__ import annotations

import io
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np

CUTOUT_DIR = Path(__file__).resolve().parents[1] / "data" / "cutouts_dr10"


def load_real_cutouts() -> dict[str, dict]:
    """{galaxy id: {'ra', 'dec', 'chw' (3,101,101) float32}} of the six real cutouts."""
    out = {}
    for path in sorted(CUTOUT_DIR.glob("*.npz")):
        with np.load(path) as d:
            out[str(d["meta_galaxy_id"])] = {"ra": float(d["meta_ra"]), "dec": float(d["meta_dec"]), "chw": np.ascontiguousarray(d["cutout"].transpose(2, 0, 1))}
    return out


def robust_invvar(chw: np.ndarray) -> np.ndarray:
    """Constant-per-band invvar from the median absolute deviation of the pixels (1.4826 MAD = sigma)."""
    mad = np.median(np.abs(chw - np.median(chw, axis=(1, 2), keepdims=True)), axis=(1, 2))
    return np.broadcast_to((1.0 / (1.4826 * mad) ** 2)[:, None, None], chw.shape).astype(np.float32)


def cutout_fits_bytes(chw: np.ndarray, bands: str = "grz", with_invvar: bool = True) -> bytes:
    from astropy.io import fits

    primary = fits.PrimaryHDU(chw.astype(np.float32))
    primary.header["BANDS"] = bands
    hdus = [primary]
    if with_invvar:
        hdus.append(fits.ImageHDU(robust_invvar(chw)))
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


class CutoutHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        try:
            self._serve()
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
            pass

    def _serve(self):
        srv = self.server
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        with srv.lock:
            srv.requests.append((url.path, q))
            mode = srv.plan.pop(0) if srv.plan else "ok"
        if mode == "500":
            self.send_response(500)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"oops!")
            return
        if mode == "timeout":
            time.sleep(srv.stall_s)  # the client has given up by now; its socket may be closed
        if url.path.rstrip("/").endswith("fits-cutout"):
            body = self._cutout(q, mode)
        else:
            body = None
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "garbage":
            body = b"SIMPLE  = this is not a FITS file" + b"\x00" * 100
        self.send_response(200)
        self.send_header("Content-Type", "application/fits")
        if mode == "truncated":  # announce the full length, send half, hang up
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if mode == "short":  # a consistently short file: Content-Length matches the truncated body
            body = body[: len(body) // 3]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _cutout(self, q, mode):
        ra, dec, size = float(q["ra"]), float(q["dec"]), int(q["size"])
        for item in self.server.cutouts.values():
            if abs(item["ra"] - ra) < 1e-6 and abs(item["dec"] - dec) < 1e-6:
                lo = 50 - size // 2
                chw = item["chw"][:, lo : lo + size, lo : lo + size]
                bands = "gr" if mode == "noband" else q.get("bands", "grz")
                chw = chw[[ "grz".index(b) for b in bands]]
                return cutout_fits_bytes(chw, bands, with_invvar="invvar" in q)
        return None


# Two real catalogue look-alikes that lie near the centre of their DR10 brick, so that a small
# mock brick image (centred on the brick centre) holds them: the Galaxy Zoo DECaLS ring
# J005130.07-011511.2 (brick 0128m012, 43 px from the centre) and the Darg et al. (2010) merger
# J152924.68+255947.9 (brick 2323p260, 112 px from the centre). Found by converting every row
# of both catalogues to its brick and sorting by offset from the brick centre.
LOOKALIKE_CATALOGUE_OBJECTS = (("gz_decals_rings", "J005130.07-011511.2"), ("darg2010_mergers", "J152924.68+255947.9"))


def write_lookalike_catalogue_bricks(path: Path, template_brick: str = "2326p000") -> Path:
    """A bricks CSV (format of dr10_south_bricks_excerpt_*.csv) for the DR10 bricks that hold
    :data:`LOOKALIKE_CATALOGUE_OBJECTS`. Geometry is exact (``brick_geometry``); PSF sizes, depths
    and E(B-V) are NOT those bricks' (the excerpts lack them): they are copied from the real row
    of ``template_brick``, which is all the mock needs to render a realistic brick."""
    import pandas as pd

    from dhs_spark.catalogs.common import parse_jname
    from dhs_spark.survey.bricks import brick_geometry

    data = Path(__file__).resolve().parents[1] / "data" / "survey"
    real = pd.concat([pd.read_csv(data / f"dr10_south_bricks_excerpt_{f}.csv", dtype={"brickname": str}) for f in "ab"])
    tmpl = real.set_index("brickname").loc[template_brick]
    rows = []
    for _cat, name in LOOKALIKE_CATALOGUE_OBJECTS:
        ra, dec = parse_jname(name)
        geo = {k: (str(v[0]) if k == "brickname" else float(v[0])) for k, v in brick_geometry(ra, dec).items()}
        rows.append({**geo, **{c: tmpl[c] for c in real.columns if c not in geo and c != "brickname"}})
    out = pd.DataFrame(rows)[list(real.columns)]
    out.to_csv(path, index=False)
    return Path(path)
