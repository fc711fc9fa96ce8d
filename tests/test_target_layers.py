"""DeepSpec's meaning of ``target_layer_ids`` (``hidden_states[id + 1]``, -1 = embeddings,
the final decoder layer refused), pinned against hidden states taken the way DeepSpec's
training cache takes them: the raw output of decoder layer ``id`` (a forward hook), or
the embedding output for -1. One helper serves the drafter config, the proposer and both
target adapters."""

import pytest
import torch

from dspark_ops import ConfidenceThreshold, DSparkConfig
from dspark_ops.speculative.target_layers import hidden_state_indices, select_hidden_states, validate_target_layer_ids
from dspark_ops.speculative.targets import HFCausalLM, TinyCausalLM, TinyConfig


def test_index_mapping_and_refusals():
    assert hidden_state_indices([-1, 0, 3], 5) == [0, 1, 4]
    assert hidden_state_indices([1, 9, 17, 25, 33], 36) == [2, 10, 18, 26, 34]
    with pytest.raises(ValueError, match="final layer 4"):
        validate_target_layer_ids([0, 4], 5)
    with pytest.raises(ValueError, match="strictly increasing"):
        validate_target_layer_ids([2, 1], 5)
    with pytest.raises(ValueError, match="-2 is out of range"):
        validate_target_layer_ids([-2], 5)
    with pytest.raises(ValueError, match="empty"):
        validate_target_layer_ids([], 5)


def test_drafter_config_refuses_the_final_target_layer():
    from test_drafter import make_config

    with pytest.raises(ValueError, match="final layer 7"):
        DSparkConfig.from_dict(make_config(target_layer_ids=[1, 7]))  # num_target_layers = 8
    assert DSparkConfig.from_dict(make_config(target_layer_ids=[-1, 6])).target_layer_ids == [-1, 6]


def _tiny_qwen3(layers=4):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                   max_position_embeddings=128, tie_word_embeddings=False)
    return transformers.Qwen3ForCausalLM(cfg).double().eval()


def _deepspec_features(model, ids, layer_ids):
    """Raw decoder-layer outputs (forward hooks) and the embedding output, concatenated."""
    raw = {}
    hooks = [layer.register_forward_hook(lambda m, a, out, i=i: raw.__setitem__(i, out[0] if isinstance(out, tuple) else out))
             for i, layer in enumerate(model.model.layers)]
    hooks.append(model.model.embed_tokens.register_forward_hook(lambda m, a, out: raw.__setitem__(-1, out)))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for h in hooks:
        h.remove()
    return torch.cat([raw[i] for i in layer_ids], -1), out.hidden_states


def test_hf_adapter_takes_the_layers_deepspec_takes():
    model = _tiny_qwen3()
    layer_ids = [-1, 0, 2]
    prompt = torch.tensor([[3, 14, 15, 9, 26, 5]])
    expect, hs = _deepspec_features(model, prompt, layer_ids)
    torch.testing.assert_close(select_hidden_states(hs, layer_ids), expect)
    target = HFCausalLM(model, target_layer_ids=layer_ids)
    out = target.prefill(prompt[0], torch.tensor([prompt.shape[1]]), 16)
    torch.testing.assert_close(out.hidden, expect[0])
    with pytest.raises(ValueError, match="final layer 3"):
        HFCausalLM(model, target_layer_ids=[1, 3])


def test_tiny_target_takes_the_layers_deepspec_takes():
    cfg = TinyConfig(vocab_size=40, d_model=16, n_layers=3, n_heads=2, d_ff=32, target_layer_ids=(-1, 1))
    target = TinyCausalLM(cfg, dtype=torch.float64)
    ids = torch.tensor([[1, 2, 3, 4]])
    out = target.prefill(ids[0], torch.tensor([4]), 8)
    emb = target.embed(ids)[0]
    # Output of block 1 (0-based) by running blocks 0 and 1 of the plain forward.
    _, layers = TinyCausalLM(TinyConfig(**{**cfg.__dict__, "target_layer_ids": (0, 1)}), dtype=torch.float64)._run(
        ids, torch.arange(4)[None], cache=False)
    torch.testing.assert_close(out.hidden[:, :16], emb)
    torch.testing.assert_close(out.hidden[:, 16:], layers[1][0])
    with pytest.raises(ValueError, match="final layer 2"):
        TinyCausalLM(TinyConfig(**{**cfg.__dict__, "target_layer_ids": (2,)}))


def test_confidence_threshold_rules():
    c = torch.tensor([[0.95, 0.9, 0.85, 0.9, 0.3]])
    cap = torch.tensor([5])
    assert ConfidenceThreshold(0.8)(c, cap).tolist() == [4]  # DeepSpec's evaluator: first c_k < 0.8 is k = 5
    assert ConfidenceThreshold(0.8, rule="survival")(c, cap).tolist() == [2]
    assert ConfidenceThreshold(0.0)(c, cap).tolist() == [5]
    assert ConfidenceThreshold(0.8)(c, torch.tensor([3])).tolist() == [3]
    with pytest.raises(ValueError, match="rule"):
        ConfidenceThreshold(0.5, rule="product")
