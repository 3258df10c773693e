"""A small mixed pool and gradient config shared by the gradient and cluster tests, and the
reference every streaming pass is checked against: all normalised gradients, stacked."""

from __future__ import annotations

import numpy as np
import torch

RECORDS = [
    {"id": f"s{i}", "domain": d, "instruction": q, "input": "", "output": a}
    for i, (d, q, a) in enumerate(
        [
            ("math", "Add 2 and 3.", "5"),
            ("math", "What is 7 times 6?", "42"),
            ("math", "Subtract 4 from 10.", "6"),
            ("writing", "Write one line about rain.", "Rain taps softly on the roof at night."),
            ("writing", "Describe the sea in a sentence.", "The sea rolls grey and wide under the clouds."),
            ("code", "Write a Python function that doubles x.", "def double(x):\n    return 2 * x"),
            ("code", "Return the length of a list in Python.", "def size(xs):\n    return len(xs)"),
            ("finance", "A $100 deposit earns 5% simple interest for 2 years. Interest?", "10.00"),
        ]
    )
]


PARAMS = {
    "warmup": {
        "fraction": 1.0,
        "lora": {"rank": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "train": {"epochs": 2, "learning_rate": 5e-2, "batch_size": 4, "max_length": 48, "warmup_ratio": 0.0},
    },
    "batch_size": 3,
    "max_length": 48,
    "loss_on": "response",
    "elrea_loss_on": "instruction",
    "normalize": True,
    "svd": {"method": "brand", "rank": 8},  # rank = n: the streamed SVD must equal the stacked one
    "projection": {"kind": "gaussian", "dims": [8], "elrea_dim": 16},
}


def stacked_gradients(tiny_model_dir, warmup, loss_on="response"):
    """The reference: every normalised gradient, stacked (what the streaming pass avoids)."""
    from gs.gradients.passes import gradient_model, normalise_rows
    from gs.gradients.per_sample import iter_gradients

    model, tok = gradient_model(str(tiny_model_dir), str(warmup))
    grads = torch.cat(
        [
            g
            for _, g in iter_gradients(
                model, tok, RECORDS, batch_size=8, max_length=48, loss_on=loss_on, progress=False
            )
        ]
    )
    return normalise_rows(grads).numpy().astype(np.float64)
