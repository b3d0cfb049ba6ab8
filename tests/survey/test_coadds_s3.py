"""Coadd bricks read from s3:// through boto3, against moto's S3 served on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dhs_spark.errors import RejectError
from dhs_spark.survey.coadds import CoaddBrick, coadd_brick_dir


def test_s3_brick_equals_local_brick(mock_survey, moto_endpoint, tmp_path):
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="dhs-test")
    brickname = mock_survey.bricknames[0]
    local_dir = mock_survey.brick_dir(brickname)
    prefix = coadd_brick_dir("survey", brickname)
    uploaded = sorted(p.name for p in local_dir.iterdir() if p.is_file())
    for name in uploaded:
        if "-image-z" in name:
            continue  # one band left out on S3: must become a reject, not a crash
        s3.upload_file(str(local_dir / name), "dhs-test", f"{prefix}/{name}")

    catalog = pd.read_parquet(mock_survey.catalog_parquet)
    row = catalog[catalog["BRICKNAME"] == brickname].iloc[0]
    local = CoaddBrick(mock_survey.root, brickname, bands=("g", "r")).cutout(row["RA"], row["DEC"], 64)
    remote_brick = CoaddBrick("s3://dhs-test/survey", brickname, bands=("g", "r"), cache_dir=tmp_path / "cache")
    remote = remote_brick.cutout(row["RA"], row["DEC"], 64)
    np.testing.assert_array_equal(remote.image, local.image)
    np.testing.assert_array_equal(remote.invvar, local.invvar)
    assert len(list((tmp_path / "cache").iterdir())) >= 4, "brick files downloaded once into the cache"

    with pytest.raises(RejectError) as info:
        CoaddBrick("s3://dhs-test/survey", brickname, cache_dir=tmp_path / "cache2").cutout(row["RA"], row["DEC"], 64)
    assert info.value.reason == "missing_band" and "z" in str(info.value)
