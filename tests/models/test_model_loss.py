import pytest
import torch
import torch.nn.functional as F

from nmt.models.loss import label_smoothed_nll


def _inputs(seed=0, tokens=12, vocab=9):
    generator = torch.Generator().manual_seed(seed)
    log_probs = torch.log_softmax(torch.randn(tokens, vocab, generator=generator), dim=-1)
    targets = torch.randint(1, vocab, (tokens,), generator=generator)
    targets[[2, 7]] = 0  # padding
    return log_probs, targets


def test_without_smoothing_it_is_summed_nll_over_real_tokens():
    log_probs, targets = _inputs()
    loss, nll = label_smoothed_nll(log_probs, targets, smoothing=0.0)
    expected = F.nll_loss(log_probs, targets, ignore_index=0, reduction="sum")
    assert torch.allclose(loss, expected) and torch.allclose(nll, expected)


def test_smoothing_matches_the_explicit_target_distribution():
    log_probs, targets = _inputs(seed=1)
    eps, vocab = 0.2, log_probs.size(1)
    expected = torch.tensor(0.0)
    for row in range(len(targets)):
        if targets[row] == 0:
            continue
        q = torch.full((vocab,), eps / (vocab - 1))
        q[0] = 0.0  # padding is never a target
        q[targets[row]] += 1 - eps
        assert torch.isclose(q.sum(), torch.tensor(1.0))
        expected = expected - (q * log_probs[row]).sum()
    loss, nll = label_smoothed_nll(log_probs, targets, smoothing=eps)
    assert torch.allclose(loss, expected)
    assert torch.allclose(nll, F.nll_loss(log_probs, targets, ignore_index=0, reduction="sum"))


def test_padding_rows_contribute_nothing_even_to_gradients():
    log_probs, targets = _inputs(seed=2)
    log_probs.requires_grad_(True)
    loss, _ = label_smoothed_nll(log_probs, targets, smoothing=0.1)
    loss.backward()
    assert not log_probs.grad[targets == 0].any()
    assert log_probs.grad[targets != 0].any(dim=1).all()


def test_rejects_smoothing_outside_zero_one():
    log_probs, targets = _inputs()
    with pytest.raises(ValueError):
        label_smoothed_nll(log_probs, targets, smoothing=1.0)
