"""Spark phase-4 jobs: 4a manifests, 4c injected stamps, 4d quality gates.

Spark only moves rows here; the per-row work calls the pure numpy functions of
``dhs_spark.sims`` and ``dhs_spark.survey``. The spark-submit entry point is
``emr/phase4_pipeline.py`` (:func:`dhs_spark.jobs.pipeline.main`).
"""
