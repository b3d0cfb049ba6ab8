"""DR10 survey access: brick grid and bricks table, footprint cross-match, LRG parent sample,
cutouts from coadd bricks and from the Legacy Survey cutout service, and a mock survey.

Modules (import what you need; nothing heavy is imported here):

- :mod:`~dhs_spark.survey.bricks`: brick grid (``brickname_for``), ``load_bricks_table``, psfdepth units.
- :mod:`~dhs_spark.survey.footprint`: per-row cross-match of a catalogue against the bricks table.
- :mod:`~dhs_spark.survey.parent`: LRG colour cuts (``select_lrg``), pure numpy/pandas.
- :mod:`~dhs_spark.survey.parent_spark`: the same selection as a Spark step over sweep files.
- :mod:`~dhs_spark.survey.coadds`: ``CoaddBrick`` and ``Cutout`` (stamps from coadd bricks).
- :mod:`~dhs_spark.survey.http`: ``CachedHttpClient`` (timeouts, retries, rate limit, disk cache).
- :mod:`~dhs_spark.survey.cutout_service`: ``CutoutServiceClient`` for the viewer's fits-cutout.
- :mod:`~dhs_spark.survey.mock`: ``build_mock_survey``, a small deterministic survey in the real layout.
"""
