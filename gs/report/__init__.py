"""The report stage (``rules/report.smk``): the study's tables and figures with their uncertainty.

``scores`` (per-example scores of a report), ``tables``, ``figures``, ``build``
(``python -m gs.report.build``).
"""
