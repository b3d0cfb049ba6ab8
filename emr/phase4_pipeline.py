"""spark-submit entry point of the phase-4 pipeline (4a manifest, 4c stamps, 4d gates) and of
the distributed scoring stage (``score``: 4c stamps or the parent sample, with a checkpoint).

    spark-submit emr/phase4_pipeline.py --stage all --config CONFIG.yaml --experiment-id ID --output ROOT ...
    spark-submit emr/phase4_pipeline.py --stage score --checkpoint best.pt --score-input stamps|parent --experiment-id ID --output ROOT ...

Every flag is documented by ``--help``; the work is in :mod:`dhs_spark.jobs.pipeline`.
"""

import sys

from dhs_spark.jobs.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
