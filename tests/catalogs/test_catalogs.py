"""dhs catalogs download: offline from bundled + supplied tables, online through a local stand-in
server, and the fallback report when the network is unreachable (a closed 127.0.0.1 port)."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from dhs_spark.catalogs.common import format_jname, parse_jname
from dhs_spark.catalogs.download import download_catalogs
from dhs_spark.catalogs.merge import deduplicate, exclude_near
from dhs_spark.cli import main

SUPPLIED = Path(__file__).resolve().parents[1] / "data" / "catalogs" / "supplied"
DU_TABLE = Path(__file__).resolve().parents[2] / "dhs_spark" / "data" / "catalogs" / "slacs_s4tm_bells_du.dat"


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cat")
    rc = main(["catalogs", "download", "--all", "--offline", "--merge", "--output-dir", str(out), "--supplied-dir", str(SUPPLIED)])
    return rc, out


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused at once
    return port


def test_parse_jname_against_astropy():
    for name, hms_dms in (("SDSS J000802.96-000408.2", "00h08m02.96s -00d04m08.2s"), ("J123822.26+004953.5", "12h38m22.26s +00d49m53.5s")):
        ra, dec = parse_jname(name)
        ref = SkyCoord(hms_dms)
        assert ra == pytest.approx(ref.ra.deg, abs=1e-9) and dec == pytest.approx(ref.dec.deg, abs=1e-9), name
    ra, dec = 123.456789, -45.678912
    back = parse_jname(format_jname(ra, dec))
    sep = SkyCoord(ra * u.deg, dec * u.deg).separation(SkyCoord(back[0] * u.deg, back[1] * u.deg)).arcsec
    assert sep < 0.16, "a J-name truncates to 0.01 s in RA (0.15\") and 0.1\" in Dec"
    with pytest.raises(ValueError, match="not a J-name"):
        parse_jname("NGC 1234")


def test_offline_download_has_every_spectroscopic_lens_at_its_sdss_name(offline_run):
    rc, out = offline_run
    assert rc == 0
    lenses = pd.read_parquet(out / "known_lenses_merged.parquet")
    expected = {}
    for line in DU_TABLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            radec = line.split()[3]
            expected[f"SDSS J{radec}"] = SkyCoord(f"{radec[0:2]}h{radec[2:4]}m{radec[4:9]}s {radec[9:12]}d{radec[12:14]}m{radec[14:]}s")
    assert len(expected) == 125
    spectro = lenses[lenses["name"].isin(expected)]
    assert len(spectro) == 125, "all 125 SLACS/S4TM/BELLS lenses must survive the merge under their SDSS names"
    ref = SkyCoord([expected[n].ra for n in spectro["name"]], [expected[n].dec for n in spectro["name"]])
    sep = ref.separation(SkyCoord(spectro["ra"].to_numpy() * u.deg, spectro["dec"].to_numpy() * u.deg)).arcsec
    assert sep.max() < 0.1, f"positions must match the SDSS names within 0.1\" (worst {sep.max():.3f}\")"
    cats = spectro["catalogue"].str.split("|")
    assert cats.map(lambda c: "slacs" in c).sum() == 63 and cats.map(lambda c: "s4tm" in c).sum() == 38
    assert cats.map(lambda c: "bells" in c).sum() == 24
    assert spectro["theta_e_arcsec"].notna().sum() == 51, "Auger et al. theta_E for 51 SLACS lenses (supplied table)"
    assert lenses["brickname"].str.fullmatch(r"\d{4}[pm]\d{3}").all()


def test_offline_merge_keeps_candidates_rings_mergers_and_merges_duplicates(offline_run):
    _, out = offline_run
    lenses = pd.read_parquet(out / "known_lenses_merged.parquet")
    hn = pd.read_parquet(out / "hard_negatives_merged.parquet")
    cats = lenses["catalogue"].str.split("|")
    assert cats.map(lambda c: "desi_lenscat" in c).sum() == 5103, "every DESI candidate is in some merged row"
    assert (lenses["n_merged"] > 1).sum() > 100, "SLACS/BELLS appear in both Du and lenscat; DESI and Stein overlap"
    j0008 = lenses[lenses["name"] == "SDSS J000802.96-000408.2"].iloc[0]
    assert set(j0008["catalogue"].split("|")) == {"slacs", "lenscat_slacs_bells"} and "Bolton" in j0008["reference"]
    # no two merged lenses within 2"
    from dhs_spark.healpix import match_within

    i, j, _ = match_within(lenses["ra"], lenses["dec"], lenses["ra"], lenses["dec"], 2.0)
    assert np.all(i == j)
    assert (hn["hardneg_type"] == "ring").sum() == 235
    n_darg = sum((pd.read_csv(p)["CLASS"] != "exclude").sum() for p in SUPPLIED.glob("darg_*.csv"))
    assert 0.98 * n_darg <= (hn["hardneg_type"] == "merger").sum() <= n_darg


def test_exclusion_and_dedup_keep_references():
    lens = pd.DataFrame({"name": ["L"], "ra": [150.0], "dec": [2.0], "z_lens": [0.3], "z_src": [np.nan], "theta_e_arcsec": [np.nan],
                         "grade": ["A"], "catalogue": ["x"], "reference": ["Ref1"]})
    hn = pd.DataFrame({"name": ["near", "far"], "ra": [150.0 + 4.0 / 3600 / np.cos(np.deg2rad(2.0)), 150.0 + 6.0 / 3600 / np.cos(np.deg2rad(2.0))],
                       "dec": [2.0, 2.0]})
    kept, dropped = exclude_near(hn, lens, 5.0)
    assert kept["name"].tolist() == ["far"] and dropped["name"].tolist() == ["near"]
    assert dropped["lens_sep_arcsec"].iloc[0] == pytest.approx(4.0, abs=1e-3)
    dup = lens.assign(name="L2", ra=150.0 + 1.0 / 3600, z_lens=np.nan, z_src=1.2, catalogue="y", reference="Ref2")
    merged = deduplicate([lens, dup], 2.0)
    assert len(merged) == 1 and merged["name"].iloc[0] == "L" and merged["z_src"].iloc[0] == 1.2 and merged["z_lens"].iloc[0] == 0.3
    assert merged["reference"].iloc[0] == "Ref1|Ref2" and merged["catalogue"].iloc[0] == "x|y" and merged["n_merged"].iloc[0] == 2


def test_missing_supplied_table_is_reported_and_fails_only_when_required(tmp_path, capsys):
    rc = main(["catalogs", "download", "--all", "--offline", "--merge", "--output-dir", str(tmp_path / "a")])
    text = capsys.readouterr().out
    assert rc == 0, "mergers are optional by default"
    assert "darg2010_mergers" in text and "MISSING" in text and str(tmp_path / "a" / "supplied") in text
    rc = main(["catalogs", "download", "--all", "--offline", "--output-dir", str(tmp_path / "b"), "--require", "darg2010_mergers"])
    assert rc == 1
    assert "required catalogue(s) missing: darg2010_mergers" in capsys.readouterr().err


def test_unreachable_network_falls_back_and_says_so(tmp_path, capsys):
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    args = ["catalogs", "download", "--all", "--merge", "--output-dir", str(tmp_path), "--timeout-s", "2",
            "--vizier-url", f"{url}/asu-tsv", "--lenscat-url", f"{url}/lenscat.csv", "--rings-url", f"{url}/rings.csv"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "fell back to local data: slacs_s4tm_bells, lenscat, gz_decals_rings" in text
    assert "missing: auger2009_theta_e, darg2010_mergers" in text
    assert "ConnectionError" in text
    assert main([*args, "--require", "darg2010_mergers"]) == 1
    assert (tmp_path / "known_lenses_merged.parquet").exists()


ASU_TSV = """#
# VizieR stand-in reply
#
_RAJ2000\t_DEJ2000\tName\tClass
deg\tdeg\t\t
---------\t---------\t-------------------\t--------
182.12173\t-0.68802\tJ120829.22-004116.9\tdisturbed
189.59276\t-0.83152\tJ123822.26-004953.5\texclude
195.01579\t-0.37095\tJ130003.79-002215.4\toverlap
"""


def test_online_vizier_path_through_local_server(tmp_path):
    requests_seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests_seen.append(self.path)
            body = ASU_TSV.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/tab-separated-values")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = download_catalogs(tmp_path, sources=["darg2010_mergers"], required=(), merge=False,
                                   urls={"vizier": f"http://127.0.0.1:{server.server_port}/asu-tsv"}, timeout_s=5)
    finally:
        server.shutdown()
        server.server_close()
    report = result.reports[0]
    assert report.status == "online" and not report.fell_back and report.n_rows == 2, report
    df = pd.read_parquet(tmp_path / "sources" / "darg2010_mergers.parquet")
    assert df["name"].tolist() == ["J120829.22-004116.9", "J130003.79-002215.4"] and df["grade"].tolist() == ["disturbed", "overlap"]
    assert "-source=J%2FMNRAS%2F401%2F1043" in requests_seen[0] and "_RAJ" in requests_seen[0]
