"""The gradients stage (``rules/gradients.smk``): the warm-up LoRA and the pool's gradient features.

``warmup`` (the warm-up adapter), ``per_sample`` (batched per-sample LoRA gradients), ``passes``
(a pass over a slice of the pool), ``svd`` (online SVD), ``projection`` (the random-projection
baseline), ``extraction`` (the streaming feature passes) and ``shards`` (the same, one job a slice).
"""
