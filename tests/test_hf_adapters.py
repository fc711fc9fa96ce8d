"""Hugging Face adapters with small random ``transformers`` models built from configs (no
downloads): greedy equality with ``model.generate`` (batched prompts of different lengths,
so the padded prefill is exercised), an HF causal LM as the draft model with its own cache,
seeded reproducibility and batch invariance, a cache bounded by the tokens kept, no
deprecated cache argument, and ``generate`` with the target layers wired the DeepSpec way
reproducing DeepSpec's own decoding loop (its evaluator's rules, written out here) round by
round."""

import warnings

import pytest
import torch

from dspark_ops import ConfidenceThreshold, DSparkDrafter, generate
from dspark_ops import reference as ref
from dspark_ops.speculative.proposers import DSparkProposer, ModelDrafter
from dspark_ops.speculative.target_layers import select_hidden_states
from dspark_ops.speculative.targets import HFCausalLM

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(kind="llama", seed=0, vocab=96, layers=2):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
                  eos_token_id=None)  # no EOS: model.generate must not suppress a token (min_new_tokens)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, initializer_range=0.3))
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common, head_dim=8, initializer_range=0.3))
    return model.double().eval()


PROMPTS = [[5, 9, 14, 3, 7, 22, 1], [40], [8, 8, 30, 2]]


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_greedy_equals_model_generate_with_hf_draft_model(kind):
    model = tiny(kind)
    target = HFCausalLM(model)
    drafter = ModelDrafter(HFCausalLM(tiny(kind, seed=1)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = generate(target, drafter, PROMPTS, max_new_tokens=12, gamma=3)
    assert not [w for w in caught if "past_key_values" in str(w.message)]  # no deprecated cache argument
    with torch.no_grad():
        for p, toks in zip(PROMPTS, res.tokens):
            hf = model.generate(torch.tensor([p]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
            assert toks == hf[0, len(p):].tolist()


def test_draft_model_that_is_the_target_accepts_everything():
    model = tiny("llama", seed=2)
    res = generate(HFCausalLM(model), ModelDrafter(HFCausalLM(model)), PROMPTS, max_new_tokens=13, gamma=4)
    for s in res.rounds:
        assert s.accepted == s.lengths  # the draft's own cache follows every round exactly


def test_sampling_is_seeded_reproducible_and_batch_invariant():
    model, draft = tiny("qwen3", seed=3), tiny("qwen3", seed=4)
    kw = dict(max_new_tokens=10, gamma=3, temperature=[0.9, 1.0, 0.7], seed=[11, 12, 13])
    a = generate(HFCausalLM(model), ModelDrafter(HFCausalLM(draft)), PROMPTS, **kw)
    b = generate(HFCausalLM(model), ModelDrafter(HFCausalLM(draft)), PROMPTS, **kw)
    alone = generate(HFCausalLM(model), ModelDrafter(HFCausalLM(draft)), PROMPTS[2:], max_new_tokens=10, gamma=3,
                     temperature=0.7, seed=13)
    other = generate(HFCausalLM(model), ModelDrafter(HFCausalLM(draft)), PROMPTS, **{**kw, "seed": [21, 22, 23]})
    assert a.tokens == b.tokens
    assert alone.tokens[0] == a.tokens[2]
    assert other.tokens != a.tokens


class WrongDrafter:
    """Proposes a fixed token (mostly rejected): many rollbacks of padded verify blocks."""

    def begin(self, tokens, lengths, hidden, capacity):
        pass

    def propose(self, anchor, temperature, seed, offset, gamma):
        from dspark_ops.speculative.proposers import Proposal

        return Proposal(torch.full((anchor.shape[0], gamma), 3, dtype=torch.int64))

    def commit(self, tokens, lengths, keep, hidden):
        pass

    def retain(self, index):
        pass


def test_target_cache_is_bounded_by_the_tokens_kept():
    model = tiny("llama", seed=5)
    target = HFCausalLM(model)
    slots = []
    rollback = target.rollback

    def record(keep):
        rollback(keep)
        slots.append((target.cache_slots, int(target._next_pos.max())))

    target.rollback = record
    res = generate(target, WrongDrafter(), PROMPTS, max_new_tokens=40, gamma=6)
    assert len(res.rounds) > 20
    # Live slots are compacted to the front: the cache is as long as the longest request.
    assert all(n == longest for n, longest in slots)
    with torch.no_grad():
        hf = model.generate(torch.tensor([PROMPTS[1]]), max_new_tokens=40, min_new_tokens=40, do_sample=False)
    assert res.tokens[1] == hf[0, 1:].tolist()


# ------------------------------------------------------------------ DeepSpec's loop, round by round


def deepspec_decode(model, sd, cfg, prompt, max_new, threshold):
    """DeepSpec's generate_decoding_sample + build_dspark_proposal for one greedy request,
    written out with full recomputation: context features ``hidden_states[id + 1]``
    (extract_context_feature), the draft block from the pure-PyTorch drafter forward, the
    proposal cut before the first position with ``sigmoid(confidence) < threshold``, and
    acceptance of the longest prefix equal to the target's argmax. The proposal is also
    capped by the tokens left (as generate does) so that both stop at the same length."""
    seq = list(prompt)
    accepted_per_round = []
    with torch.no_grad():
        out = model(torch.tensor([seq]), output_hidden_states=True)
        seq.append(int(out.logits[0, -1].argmax()))
        while len(seq) - len(prompt) < max_new:
            ctx = select_hidden_states(model(torch.tensor([seq[:-1]]), output_hidden_states=True).hidden_states,
                                       cfg.target_layer_ids).float()
            anchor = torch.tensor([seq[-1]])
            hidden, base = ref.drafter_backbone(sd, cfg, ctx, torch.tensor([len(seq) - 1]), anchor)
            tokens, _, conf = ref.markov_greedy(sd, cfg, base, anchor, hidden)
            below = (conf[0] < threshold).nonzero()
            n = int(below[0]) if len(below) else cfg.block_size
            n = min(n, max_new - (len(seq) - len(prompt)) - 1)
            drafts = tokens[0, :n].tolist()
            logits = model(torch.tensor([seq + drafts])).logits[0, len(seq) - 1 :]
            choice = logits.argmax(-1).tolist()
            a = 0
            while a < n and drafts[a] == choice[a]:
                a += 1
            accepted_per_round.append(a)
            seq += drafts[:a] + [choice[a]]
    return seq[len(prompt):], accepted_per_round


def test_generate_with_deepspec_target_layers_reproduces_deepspec_rounds():
    V = 8  # a tiny vocabulary and a Markov head holding the target's bigrams: drafts often accepted
    model = tiny("qwen3", seed=1, vocab=V, layers=4).float()
    prompt = [1, 4, 2, 0, 3]
    with torch.no_grad():
        seq = list(prompt)
        for _ in range(40):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    layer_ids = [-1, 1, 2]
    config = dict(architectures=["Qwen3DSparkModel"], vocab_size=V, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
                  rope_theta=10000.0, target_layer_ids=layer_ids, num_target_layers=4, mask_token_id=V - 1,
                  block_size=4, markov_rank=V, markov_head_type="vanilla", enable_confidence_head=True,
                  confidence_head_with_markov=True)
    torch.manual_seed(3)
    drafter = DSparkDrafter(config).eval()
    with torch.no_grad():
        drafter.lm_head.weight.copy_(model.lm_head.weight)  # the target's head, as DeepSpec shares it
        drafter.embed_tokens.weight.copy_(model.model.embed_tokens.weight)
        drafter.markov_head.markov_w1.weight.copy_(torch.eye(V))
        bigram = torch.zeros(V, V)
        for a, b in zip(seq[len(prompt):], seq[len(prompt) + 1:]):
            bigram[b, a] += 1.0
        drafter.markov_head.markov_w2.weight.copy_(bigram / bigram.sum(0).clamp_min(1) * 6.0)
    sd = dict(drafter.state_dict())
    threshold = 0.5
    target = HFCausalLM(model, target_layer_ids=layer_ids)
    res = generate(target, DSparkProposer(drafter), [prompt], max_new_tokens=30, gamma=4,
                   schedule=ConfidenceThreshold(threshold))
    tokens, accepted = deepspec_decode(model, sd, drafter.config, prompt, 30, threshold)
    assert res.tokens[0] == tokens == seq[len(prompt) : len(prompt) + 30]
    assert [s.accepted[0] for s in res.rounds] == accepted
    assert sum(accepted) > 5 and len(set(s.lengths[0] for s in res.rounds)) > 1  # drafts accepted, lengths vary
