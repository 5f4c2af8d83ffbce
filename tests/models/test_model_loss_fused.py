"""The fused label-smoothed loss: same values as the composed one, gradient real * (softmax - q)."""
import pytest
import torch

from nmt.models.embeddings import PAD_ID
from nmt.models.loss import label_smoothed_nll, label_smoothed_nll_from_logits


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_matches_the_composed_loss_and_a_dense_reference_gradient(smoothing):
    torch.manual_seed(4)
    vocab = 13
    logits = (3 * torch.randn(20, vocab)).requires_grad_()
    targets = torch.randint(1, vocab, (20,))
    targets[[2, 7]] = PAD_ID  # padding targets contribute nothing
    loss, nll = label_smoothed_nll_from_logits(logits, targets, smoothing=smoothing)
    expected_loss, expected_nll = label_smoothed_nll(torch.log_softmax(logits, -1), targets,
                                                     smoothing=smoothing)
    assert torch.equal(loss, expected_loss) and torch.equal(nll, expected_nll)
    assert not nll.requires_grad
    (2.5 * loss).backward()

    # independent reference: q = (1 - eps) onehot(y) + eps / (V - 1) on every class but PAD
    q = torch.full((20, vocab), smoothing / (vocab - 1))
    q[:, PAD_ID] = 0
    q[torch.arange(20), targets] += 1 - smoothing
    real = (targets != PAD_ID).float().unsqueeze(1)
    reference = 2.5 * real * (torch.softmax(logits.detach(), -1) - q)
    torch.testing.assert_close(logits.grad, reference, rtol=0, atol=1e-6)


def test_half_precision_logits_get_a_gradient_of_their_own_dtype():
    logits = torch.randn(4, 7, dtype=torch.bfloat16, requires_grad=True)
    loss, _ = label_smoothed_nll_from_logits(logits, torch.tensor([1, 2, 3, 4]), smoothing=0.1)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


def test_rejects_smoothing_outside_the_unit_interval():
    with pytest.raises(ValueError, match="label smoothing"):
        label_smoothed_nll_from_logits(torch.zeros(2, 3), torch.tensor([1, 2]), smoothing=1.0)


def test_a_second_backward_through_a_retained_graph_fails_loudly():
    logits = torch.randn(5, 6, requires_grad=True)
    loss, _ = label_smoothed_nll_from_logits(logits, torch.tensor([1, 2, 3, 4, 5]), smoothing=0.1)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()  # the backward overwrote its saved log-probs with softmax


@pytest.mark.parametrize("block_bytes", [64, 4 << 20])
def test_consume_overwrites_fresh_logits_with_the_same_loss_and_gradient(monkeypatch, block_bytes):
    import nmt.models.loss as loss_module
    monkeypatch.setattr(loss_module, "SOFTMAX_BLOCK_BYTES", block_bytes)  # several blocks, or one
    torch.manual_seed(5)
    x, weight = torch.randn(30, 8), torch.randn(17, 8)
    targets = torch.randint(1, 17, (30,))
    targets[[3, 11]] = PAD_ID
    results = []
    for consume in (False, True):
        w = weight.clone().requires_grad_()
        logits = x @ w.t()  # a fresh product, as the output layer's
        loss, nll = label_smoothed_nll_from_logits(logits, targets, smoothing=0.1, consume=consume)
        loss.backward()
        results.append((loss.detach(), nll, w.grad, logits.detach().clone()))
    (loss_a, nll_a, grad_a, logits_a), (loss_b, nll_b, grad_b, logits_b) = results
    assert torch.equal(loss_a, loss_b) and torch.equal(nll_a, nll_b) and torch.equal(grad_a, grad_b)
    assert not torch.equal(logits_a, logits_b)  # consumed: its storage held the log-probs


def test_consume_leaves_a_leaf_alone():
    logits = torch.randn(4, 5, requires_grad=True)
    before = logits.detach().clone()
    label_smoothed_nll_from_logits(logits, torch.tensor([1, 2, 3, 4]), consume=True)
    assert torch.equal(logits.detach(), before)
