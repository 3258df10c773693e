"""The experts stage (``rules/experts.smk``): one LoRA expert per cluster, and the multi-task LoRA.

``plan`` (which cluster trains which expert), ``train`` (``python -m gs.experts.train``),
``folders`` (an experts folder and its manifest).
"""
