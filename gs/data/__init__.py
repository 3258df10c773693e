"""The data stage (``rules/data.smk``): the instruction pool and its per-domain splits.

``sources`` (where raw items come from), ``finance`` (generated word problems), ``prepare`` (the
splits, ``python -m gs.data.prepare``), ``prompting`` (chat formatting and loss masks).
"""
