#!/bin/bash
# EMR bootstrap action (emr-7.x, Amazon Linux 2023): install Dark Halo Scope and its pinned
# dependencies for python3.11 on every node.
#
#   install_deps.sh s3://BUCKET/PREFIX/code/constraints.txt s3://BUCKET/PREFIX/code/dark_halo_scope.zip [torch]
#
# A third argument "torch" (launch.py passes it when a score step is planned) also installs
# SCORE_PACKAGES: the score stage runs the trainer's model on the executors.
#
# Why python3.11: AL2023's python3 is 3.9, too old for the pinned numpy/pandas; python3.11 is
# packaged beside it. The cluster's spark-env classification (bootstrap/launch.py) exports
# PYSPARK_PYTHON=/usr/bin/python3.11, so drivers and executors run this interpreter.
# pyspark itself is NOT installed: EMR's Spark (3.5.6 on emr-7.12/7.13) provides it.
set -euo pipefail

CONSTRAINTS_URI="$1"
BUNDLE_URI="$2"
WITH_TORCH="${3:-}"
PY=/usr/bin/python3.11
WORK=/tmp/dhs_bootstrap
# Runtime packages of the spark executors (setup.py extras sims + aws + the Arrow/pandas side
# of spark), each pinned by constraints.txt.
PACKAGES="numpy pandas pyarrow scipy astropy astropy-healpix h5py galsim numba speclite pyyaml requests boto3 scikit-learn"
# The score stage's extra runtime (setup.py extra train, model side), pinned by constraints.txt.
SCORE_PACKAGES="torch safetensors"

mkdir -p "$WORK"
sudo dnf install -y -q python3.11 python3.11-pip python3.11-devel gcc-c++
aws s3 cp "$CONSTRAINTS_URI" "$WORK/constraints.txt"
aws s3 cp "$BUNDLE_URI" "$WORK/dark_halo_scope.zip"
sudo "$PY" -m pip install -q --upgrade pip
# shellcheck disable=SC2086  # PACKAGES is a word list on purpose
sudo "$PY" -m pip install -q -c "$WORK/constraints.txt" $PACKAGES
if [ "$WITH_TORCH" = "torch" ]; then
    # shellcheck disable=SC2086
    sudo "$PY" -m pip install -q -c "$WORK/constraints.txt" $SCORE_PACKAGES
fi
sudo "$PY" -m pip install -q --no-deps "$WORK/dark_halo_scope.zip"
# numba caches compiled kernels here (spark-env exports NUMBA_CACHE_DIR); it must be writable by YARN.
sudo mkdir -p /tmp/numba_cache && sudo chmod 1777 /tmp/numba_cache
# Fail the bootstrap (and the cluster) now rather than in the first Spark task.
"$PY" -c "import dhs_spark.jobs.phase4c_stamps, numpy, pandas, pyarrow, galsim, h5py, astropy_healpix, speclite; print('dhs bootstrap ok', numpy.__version__)"
if [ "$WITH_TORCH" = "torch" ]; then
    "$PY" -c "import dhs_spark.jobs.score_stage, trainer.score, torch; print('dhs score deps ok, torch', torch.__version__)"
fi
