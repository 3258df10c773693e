"""The cluster stage (``rules/cluster.smk``): GradientSpace's clustering, its baselines and their quality.

``features`` (the gradient features as read here), ``methods`` (the clusterings), ``assignments``
(their files), ``coherence`` (the gradient-coherence pass), ``quality`` and ``ablation`` (the
projection ablation).
"""
