"""The models stage (``rules/models.smk``): resolve, convert and load the base model, and train LoRA.

``prepare`` (spec to a plain Hugging Face folder, ``python -m gs.models.prepare``), ``load``,
``dtype`` (``dtype: auto`` by measurement), ``lora`` (the one LoRA training loop), ``embeddings``
(prompt encoders of the router and the semantic baseline).
"""
