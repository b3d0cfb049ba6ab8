"""TEST FIXTURE for the trainer: small synthetic stamp Parquet in the real schema.

NOT simulation output and not used by any package code: noise + a round Gaussian "host" on the
centre pixel, and for positives a Gaussian-profile ring segment ("arc") at theta_E around it,
so that a tiny CNN learns in a few CPU epochs. Controls are PAIRED: each host is written twice
at the same position with the same noise, once without and once with the arc (so
positive - control = arc exactly, which the null-injection gate uses). Splits are hashed from
the HEALPix cell (nside 1024), as the pipeline does, so a host never straddles two splits.
The real-pipeline end-to-end test is added by the lead separately.

``write_stamp_parquet`` is also imported (by file path) by benchmarks/bench_trainer.py.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhs_spark.config import DataVariantConfig
from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.healpix import healpix_index
from dhs_spark.schema import STAMP_SCHEMA

PIXEL_SCALE_ARCSEC = DataVariantConfig().pixel_scale_arcsec  # DR10, 0.262"/px
NOISE_NMGY = np.array([0.004, 0.005, 0.009], np.float32)  # per-band sky sigma, g r z
HOST_PEAK_NMGY = np.array([0.03, 0.08, 0.15], np.float32)  # red host
ARC_COLOUR = np.array([1.0, 0.8, 0.6], np.float32)  # blue arc (relative amplitude per band)


def make_stamps(n_hosts: int, stamp_size: int = 32, seed: int = 0):
    """Arrays of 2 * n_hosts paired stamps: images (N, 3, S, S) float32 nanomaggies and columns."""
    rng = rng_from_seed(seed)
    s = stamp_size
    y, x = np.indices((s, s)) - s // 2
    r_px, phi = np.hypot(x, y), np.arctan2(y, x)
    ra = rng.uniform(150.0, 151.5, n_hosts)
    dec = rng.uniform(1.0, 2.5, n_hosts)
    host_sigma_px = rng.uniform(1.5, 2.5, n_hosts)
    host = HOST_PEAK_NMGY[None, :, None, None] * np.exp(-0.5 * (r_px / host_sigma_px[:, None, None]) ** 2)[:, None]
    noise = NOISE_NMGY[None, :, None, None] * rng.standard_normal((n_hosts, 3, s, s))
    controls = (host + noise).astype(np.float32)
    theta_e = rng.uniform(0.8, 2.5, n_hosts)
    arc_phi0 = rng.uniform(-np.pi, np.pi, n_hosts)
    arc_half_width_rad = rng.uniform(0.6, 1.6, n_hosts)
    dphi = np.angle(np.exp(1j * (phi[None] - arc_phi0[:, None, None])))
    shape = np.exp(-0.5 * ((r_px[None] - theta_e[:, None, None] / PIXEL_SCALE_ARCSEC) / 1.0) ** 2) * np.exp(
        -0.5 * (dphi / arc_half_width_rad[:, None, None]) ** 2
    )
    unit_arc = ARC_COLOUR[None, :, None, None] * shape[:, None]
    unit_snr = np.sqrt(((unit_arc / NOISE_NMGY[None, :, None, None]) ** 2).sum(axis=(1, 2, 3)))
    snr = np.exp(rng.uniform(np.log(0.3), np.log(200.0), n_hosts))  # some invisible (< 1), most clear
    arc = unit_arc * (snr / unit_snr)[:, None, None, None]
    positives = (controls + arc).astype(np.float32)
    images = np.concatenate([controls, positives])
    psf_fwhm_r = rng.uniform(1.0, 1.6, n_hosts)
    label = np.r_[np.zeros(n_hosts, np.int32), np.ones(n_hosts, np.int32)]
    cols = {
        "ra": np.r_[ra, ra],
        "dec": np.r_[dec, dec],
        "label": label,
        "theta_e_arcsec": np.r_[np.zeros(n_hosts), theta_e],
        "arc_snr_sum": np.r_[np.zeros(n_hosts), snr],
        "psf_fwhm_r_arcsec": np.r_[psf_fwhm_r, psf_fwhm_r],
    }
    order = rng.permutation(2 * n_hosts)  # the pipeline writes rows in no particular order
    return images[order], {k: v[order] for k, v in cols.items()}


def stamp_table(images: np.ndarray, cols: dict, nside: int = 1024) -> pa.Table:
    """A table in dhs_spark.schema.STAMP_SCHEMA; columns not given are null."""
    n, c, s, _ = images.shape
    hp = healpix_index(cols["ra"], cols["dec"], nside)
    frac = np.array([stable_hash64("split", int(h)) % 1000 / 1000 for h in hp])
    split = np.where(frac < 0.6, "train", np.where(frac < 0.8, "val", "test"))
    given = {
        "task_id": pa.array([f"{stable_hash64('task', float(r), float(d), int(lab)):016x}" for r, d, lab in zip(cols["ra"], cols["dec"], cols["label"])]),
        "split": pa.array(split),
        "healpix_index": pa.array(hp),
        "is_control": pa.array(cols["label"] == 0),
        "image": pa.array([im.astype("<f4").tobytes() for im in images], pa.binary()),
        "n_bands": pa.array(np.full(n, c, np.int32)),
        "stamp_size": pa.array(np.full(n, s, np.int32)),
        "source_mode": pa.array(np.where(cols["label"] == 1, "parametric", "none")),
    }
    for k in ("ra", "dec", "label", "theta_e_arcsec", "arc_snr_sum", "psf_fwhm_r_arcsec"):
        given[k] = pa.array(cols[k])
    arrays = [given[f.name].cast(f.type) if f.name in given else pa.nulls(n, f.type) for f in STAMP_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=STAMP_SCHEMA)


def write_stamp_parquet(out_dir, n_hosts: int, stamp_size: int = 32, seed: int = 0, n_files: int = 2, row_group_size: int = 64):
    """Write the fixture as ``n_files`` Parquet files (plus a ``_SUCCESS`` marker, as Spark does)."""
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, cols = make_stamps(n_hosts, stamp_size, seed)
    table = stamp_table(images, cols)
    bounds = np.linspace(0, table.num_rows, n_files + 1).astype(int)
    for i in range(n_files):
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), out_dir / f"part-{i:05d}.parquet", row_group_size=row_group_size)
    (out_dir / "_SUCCESS").touch()
    return out_dir, images, cols


@pytest.fixture(scope="session")
def stamp_data(tmp_path_factory):
    """(directory, images, columns) of 2 x 400 paired fixture stamps, 32x32 px."""
    return write_stamp_parquet(tmp_path_factory.mktemp("stamps"), n_hosts=400, seed=1)


@pytest.fixture(scope="module")
def paired_arrays():
    """(images, columns) of 2 x 300 paired fixture stamps in memory (no Parquet)."""
    return make_stamps(300, stamp_size=32, seed=4)
