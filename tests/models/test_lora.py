"""gs.models.lora's epoch order (train.group_by_length) against transformers' length grouping."""

from __future__ import annotations


def test_epoch_order_by_length_is_transformers_length_grouped_order():
    """train.group_by_length: the epoch's order is transformers' get_length_grouped_indices from the same
    generator state (Trainer(group_by_length=True)); without it, torch.randperm's."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from gs.models.lora import epoch_order

    lengths = [5, 50, 7, 48, 9, 30, 31, 2] * 4
    grouped = epoch_order(lengths, 4, torch.Generator().manual_seed(1), True)
    assert grouped == get_length_grouped_indices(lengths, 4, generator=torch.Generator().manual_seed(1))
    assert sorted(grouped) == list(range(len(lengths)))
    plain = epoch_order(lengths, 4, torch.Generator().manual_seed(1), False)
    assert plain == torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
