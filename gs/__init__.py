"""gradientspace-bench: gradient-space data organisation for instruction tuning.

Modules, one concept each: ``data`` (four-domain splits), ``models`` (model resolution and loading),
``prompting`` (chat formatting and loss masks), ``gradients`` (warm-up LoRA, per-sample LoRA
gradients), ``svd`` (online SVD), ``cluster`` (GradientSpace clustering and baselines), ``quality``,
``experts``, ``router``, ``inference``, ``evaluation``, ``sandbox``, ``metrics``, ``selection``
(ClusterUCB), ``report``.
"""

__version__ = "0.1.0"
