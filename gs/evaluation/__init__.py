"""The evaluation stage (``rules/evaluation.smk``): lm-eval scoring of every system, and latency.

lm-eval side: ``lm`` (the ``gs-routed`` model), ``tasks`` (task folders), ``metrics`` and
``fluency`` (scoring rules), ``run`` (``python -m gs.evaluation.run``). Inference: ``routing``
(policies), ``routed_model``, ``decoding`` (generation), ``scoring`` (likelihoods). Generated code:
``sandbox`` and its ``bubblewrap`` layer. ``latency``: single expert against ensembles.
"""
