"""Which target hidden states a DFlash / DSpark drafter reads: DeepSpec's ``target_layer_ids``.

DeepSpec numbers the target's *decoder layers*: ``target_layer_ids = [1, 9, 17, 25, 33]``
means the outputs of decoder layers 1, 9, ... (0-based), i.e. ``hidden_states[id + 1]`` of a
Hugging Face forward with ``output_hidden_states=True``, and ``-1`` means the embedding
output ``hidden_states[0]`` (DeepSpec's ``extract_context_feature``). The final decoder
layer is refused, as DeepSpec's evaluator refuses it: Hugging Face stores the *normed*
final output at that index while DeepSpec's training cache holds the raw layer output, so a
drafter trained on it would silently get other features.

Every component that selects target features (the drafter's config check, ``DSparkProposer``,
``TinyCausalLM`` and ``HFCausalLM``) goes through :func:`hidden_state_indices`, so the
meaning cannot drift apart between them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["hidden_state_indices", "select_hidden_states", "validate_target_layer_ids"]


def validate_target_layer_ids(layer_ids: Sequence[int], num_target_layers: Optional[int] = None) -> list[int]:
    """DeepSpec's rule: non-empty, strictly increasing, each ``-1`` (embeddings) or a decoder
    layer ``0 .. num_target_layers - 2`` (the final layer is refused; see the module
    docstring). With ``num_target_layers = None`` only the lower bound and the order are
    checked. Raises ``ValueError`` naming the offending id."""
    ids = [int(i) for i in layer_ids]
    if not ids:
        raise ValueError("target_layer_ids must not be empty")
    for prev, cur in zip(ids, ids[1:]):
        if cur <= prev:
            raise ValueError(f"target_layer_ids must be strictly increasing, got {ids}")
    for i in ids:
        if i < -1:
            raise ValueError(f"target_layer_id {i} is out of range: -1 (embeddings) or a decoder layer index >= 0")
        if num_target_layers is not None and i >= num_target_layers - 1:
            raise ValueError(
                f"target_layer_id {i} is not allowed for a target with {num_target_layers} decoder layers: "
                f"ids are -1 (embeddings) or 0 .. {num_target_layers - 2}; the final layer {num_target_layers - 1} "
                "is refused because Hugging Face returns its output after the final norm (DeepSpec refuses it too)"
            )
    return ids


def hidden_state_indices(layer_ids: Sequence[int], num_target_layers: Optional[int] = None) -> list[int]:
    """``target_layer_ids`` -> indices into ``output_hidden_states``: ``id + 1`` (``-1 -> 0``)."""
    return [i + 1 for i in validate_target_layer_ids(layer_ids, num_target_layers)]


def select_hidden_states(hidden_states: Sequence[torch.Tensor], layer_ids: Sequence[int]) -> torch.Tensor:
    """``[H_l1 ; ... ; H_lm]`` concatenated on the last dim from a Hugging Face style tuple
    ``hidden_states`` (embeddings first, then one entry per decoder layer)."""
    n = len(hidden_states) - 1
    return torch.cat([hidden_states[i] for i in hidden_state_indices(layer_ids, n)], -1)
