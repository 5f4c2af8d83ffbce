import torch

from nmt.models.attention import LuongAttention, score_bias
from nmt.models.encoders import length_mask


def _inputs(seed=0, *, batch=4, tgt_len=3, src_len=6, query=5, context=7):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(batch, tgt_len, query, generator=generator) * 3
    values = torch.randn(batch, src_len, context, generator=generator)
    return queries, values


def test_padding_gets_exactly_zero_weight_and_rows_sum_to_one():
    torch.manual_seed(0)
    attention = LuongAttention(5, 7)
    queries, values = _inputs()
    lengths = torch.tensor([6, 4, 1, 3])
    mask = length_mask(lengths, 6)
    values[~mask] = 1e4  # huge padding values must still get no weight
    _, weights = attention(queries, attention.project_keys(values), values, mask=mask)
    assert torch.equal(weights[~mask.unsqueeze(1).expand_as(weights)],
                       torch.zeros(int((~mask).sum()) * 3))
    assert torch.allclose(weights.sum(-1), torch.ones(4, 3), atol=1e-6)
    assert torch.equal(weights[2, :, 0], torch.ones(3))  # a single real token takes it all


def test_matches_luong_general_formula_computed_by_hand():
    torch.manual_seed(1)
    attention = LuongAttention(5, 7)
    queries, values = _inputs(seed=1)
    lengths = torch.tensor([6, 2, 5, 4])
    mask = length_mask(lengths, 6)
    contexts, weights = attention(queries, attention.project_keys(values), values, mask=mask)
    W = attention.key_projection.weight  # (query, context)
    for b in range(4):
        n = int(lengths[b])
        for t in range(3):
            scores = torch.stack([queries[b, t] @ (W @ values[b, s]) for s in range(n)])
            expected = torch.softmax(scores, 0)
            assert torch.allclose(weights[b, t, :n], expected, atol=1e-6)
            assert torch.allclose(contexts[b, t], expected @ values[b, :n], atol=1e-5)


def test_padding_length_does_not_change_a_sentence():
    torch.manual_seed(2)
    attention = LuongAttention(5, 7)
    queries, values = _inputs(seed=2, batch=1, src_len=4)
    padded = torch.cat([values, torch.randn(1, 5, 7)], dim=1)
    short, _ = attention(queries, attention.project_keys(values), values,
                         mask=torch.ones(1, 4, dtype=torch.bool))
    long, _ = attention(queries, attention.project_keys(padded), padded,
                        mask=length_mask(torch.tensor([4]), 9))
    assert torch.allclose(short, long, atol=1e-6)


def test_single_step_equals_sequence_form():
    torch.manual_seed(3)
    attention = LuongAttention(5, 7)
    queries, values = _inputs(seed=3)
    mask = length_mask(torch.tensor([6, 5, 2, 3]), 6)
    keys = attention.project_keys(values)
    contexts, weights = attention(queries, keys, values, mask=mask)
    context, weight = attention.step(queries[:, 1], keys, values, mask=mask)
    assert torch.allclose(context, contexts[:, 1]) and torch.allclose(weight, weights[:, 1])


def test_score_bias_gives_the_masked_weights_and_gradients_bit_for_bit():
    torch.manual_seed(4)
    attention = LuongAttention(6, 5)
    queries = torch.randn(3, 4, 6, requires_grad=True)
    values = torch.randn(3, 7, 5, requires_grad=True)
    mask = torch.arange(7).unsqueeze(0) < torch.tensor([[7], [4], [1]])
    results = []
    for bias in (None, score_bias(mask)):
        keys = attention.project_keys(values)
        context, weights = attention(queries, keys, values, mask=mask, bias=bias)
        grads = torch.autograd.grad([context, weights], [queries, values],
                                    [torch.ones_like(context), torch.randn(weights.shape,
                                     generator=torch.Generator().manual_seed(5))])
        results.append((context, weights) + grads)
    for plain, biased in zip(*results):
        assert torch.equal(plain, biased)
    assert (results[1][1][~mask.unsqueeze(1).expand(-1, 4, -1)] == 0).all()
