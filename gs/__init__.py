"""gradientspace-bench: gradient-space data organisation for instruction tuning.

One sub-package per workflow stage, named as its rule file (``rules/<stage>.smk`` runs
``python -m gs.<stage>.<module>``): ``data``, ``models``, ``gradients``, ``cluster``, ``experts``,
``router``, ``selection`` (ClusterUCB and LESS), ``evaluation``, ``report`` and ``plan`` (the
resource planner). What every stage shares sits at the top: ``io`` (files and tables), ``checks``
(argument validation), ``intervals`` and ``spread`` (uncertainty of the reported numbers).
"""

__version__ = "0.1.0"
