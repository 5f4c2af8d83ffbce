"""The decoder readout's Triton kernels (nmt/models/triton_loss.py), under TRITON_INTERPRET=1 on
CPU tensors (the kernel tests also compiled on CUDA tensors with REVNMT_TRITON_TEST_DEVICE=cuda,
recipes/triton_gpu_check.sh): the fused label-smoothed loss against the composed torch loss and
plain autograd (values, gradient, consume, determinism, launches), the block dropout masks
(values, rate, independence of blocking and seed), and a whole reversible training step with
both against the tensor path."""
import os

DEVICE_NAME = os.environ.get("REVNMT_TRITON_TEST_DEVICE", "cpu")
if DEVICE_NAME == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from conftest import tiny_model_config  # noqa: E402
from nmt.config import ReversibleConfig  # noqa: E402
from nmt.models import build_model, triton_loss  # noqa: E402
from nmt.models.embeddings import PAD_ID  # noqa: E402
from nmt.models.loss import label_smoothed_nll, label_smoothed_nll_from_logits  # noqa: E402
from nmt.models.reversible_decoder import StepDropout  # noqa: E402
from nmt.reversible import triton_kernels  # noqa: E402
from nmt.reversible.launch_count import OpCounter  # noqa: E402

DEVICE = torch.device(DEVICE_NAME)
pytestmark = pytest.mark.skipif(
    not (triton_kernels.interpreting() if DEVICE.type == "cpu" else torch.cuda.is_available()),
    reason="Triton needs TRITON_INTERPRET=1 for CPU tensors, or a GPU")
ON_CPU = pytest.mark.skipif(DEVICE.type != "cpu", reason="the model tests run on CPU tensors")

ROWS, VOCAB = 37, 517  # not multiples of the tiles' rows and columns


def _case(seed=0, rows=ROWS, vocab=VOCAB):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 16, generator=generator)
    weight = torch.randn(vocab, 16, generator=generator)
    targets = torch.randint(1, vocab, (rows,), generator=generator)
    targets[[0, 5, rows - 1]] = PAD_ID  # padding targets contribute nothing
    targets[7] = vocab - 1  # a target in the last, partial column tile
    return x.to(DEVICE), weight.to(DEVICE), targets.to(DEVICE)


def _reference(x, weight, targets, smoothing):
    w = weight.clone().requires_grad_()
    logits = x @ w.t()
    logits.retain_grad()
    loss, nll = label_smoothed_nll(torch.log_softmax(logits, -1), targets, smoothing=smoothing)
    (1.5 * loss).backward()
    return loss.detach(), nll, logits.grad, w.grad


def _fused(x, weight, targets, smoothing, consume):
    w = weight.clone().requires_grad_()
    logits = x @ w.t()  # a fresh product, as the output layer's
    logits.retain_grad()
    before = logits.detach().clone()
    loss, nll = label_smoothed_nll_from_logits(logits, targets, smoothing=smoothing,
                                               consume=consume, fused=True)
    overwritten = not torch.equal(logits.detach(), before)
    (1.5 * loss).backward()
    return loss.detach(), nll, logits.grad, w.grad, overwritten


@pytest.mark.parametrize("tile", [None, (4, 128)], ids=["one-column-tile", "five-column-tiles"])
@pytest.mark.parametrize("consume", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_loss_matches_the_composed_loss_and_autograd(smoothing, consume, tile,
                                                           monkeypatch):
    if tile is not None:  # the online max / sum-exp across column tiles
        monkeypatch.setattr(triton_loss, "_INTERPRETER_TILE", tile)
        monkeypatch.setattr(triton_loss, "_GPU_TILE", tile)
    x, weight, targets = _case()
    loss, nll, logits_grad, w_grad = _reference(x, weight, targets, smoothing)
    got_loss, got_nll, got_logits_grad, got_w_grad, overwritten = _fused(x, weight, targets,
                                                                        smoothing, consume)
    torch.testing.assert_close(got_loss, loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_nll, nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_logits_grad, logits_grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_w_grad, w_grad, rtol=1e-4, atol=1e-4)
    assert not got_nll.requires_grad
    assert overwritten == consume  # consume: the gradient is written over the logits
    if smoothing == 0.0:
        assert torch.equal(got_loss, got_nll)
    assert float(got_logits_grad[[0, 5, ROWS - 1]].abs().max()) == 0.0  # PAD rows: no gradient


def test_fused_loss_reads_targets_from_a_strided_slice():
    """StepLoss passes a (batch, steps) slice of the targets, rows in row-major order."""
    x, weight, targets = _case(seed=5, rows=36)
    logits = x @ weight.t()
    table = torch.full((12, 7), PAD_ID, dtype=torch.long, device=DEVICE)
    table[:, 2:5] = targets.view(12, 3)  # a non-contiguous (12, 3) slice
    expected = label_smoothed_nll_from_logits(logits.clone(), targets, smoothing=0.1, fused=True)
    got = label_smoothed_nll_from_logits(logits.clone(), table[:, 2:5], smoothing=0.1, fused=True)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    with pytest.raises(ValueError, match="targets for 36 rows"):
        label_smoothed_nll_from_logits(logits, table[:, 2:6], smoothing=0.1, fused=True)


def test_fused_loss_is_bit_identical_run_to_run():
    x, weight, targets = _case(seed=1, rows=70, vocab=1001)
    first, second = (_fused(x, weight, targets, 0.1, consume=True) for _ in range(2))
    for a, b in zip(first[:4], second[:4]):
        assert torch.equal(a, b)


def test_fused_loss_launches_three_ops_forward_and_backward():
    x, weight, targets = _case(seed=2)
    logits, root = (x @ weight.t()).requires_grad_(), torch.ones(())  # root: not counted
    counter, before = OpCounter(), triton_kernels.LAUNCHES[0]
    with counter:
        loss, _ = label_smoothed_nll_from_logits(logits, targets, smoothing=0.1, fused=True)
        forward = counter.compute + triton_kernels.LAUNCHES[0] - before
        loss.backward(root)
    total = counter.compute + triton_kernels.LAUNCHES[0] - before
    assert forward == 2 and total == 3, dict(counter.ops)


def test_fused_loss_falls_back_for_other_dtypes_and_takes_empty_blocks():
    x, weight, targets = _case(seed=3)
    logits = (x @ weight.t()).bfloat16().requires_grad_()  # not float32: the torch path
    loss, _ = label_smoothed_nll_from_logits(logits, targets, smoothing=0.1, fused=True)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16
    empty = torch.zeros(0, VOCAB, device=DEVICE, requires_grad=True)  # a block without real rows
    loss, nll = label_smoothed_nll_from_logits(empty, targets[:0], smoothing=0.1, fused=True)
    assert float(loss.detach()) == 0.0 and float(nll) == 0.0


def test_fused_loss_without_triton_is_the_torch_loss(monkeypatch):
    x, weight, targets = _case(seed=4)
    logits = x @ weight.t()
    expected = label_smoothed_nll_from_logits(logits, targets, smoothing=0.1)
    monkeypatch.setattr(triton_loss, "triton", None)  # as if Triton were not installed
    got = label_smoothed_nll_from_logits(logits, targets, smoothing=0.1, fused=True)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_a_second_backward_through_the_fused_loss_fails_loudly():
    logits = torch.randn(5, 300, device=DEVICE, requires_grad=True)
    targets = torch.tensor([1, 2, 3, 4, 5], device=DEVICE)
    loss, _ = label_smoothed_nll_from_logits(logits, targets, smoothing=0.1, fused=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()  # the backward scaled its saved gradient in place


# -- the block dropout masks -------------------------------------------------------------------

SEED, BATCH, SIZE, KEEP = 2**61 + 12345, 9, 301, 0.7


def test_masks_are_zero_or_one_over_keep_at_rate_keep():
    masks = triton_loss.step_masks(SEED, 3, 4, BATCH, SIZE, KEEP, DEVICE)
    assert masks.shape == (BATCH, 4, SIZE) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) == {0.0, torch.tensor(1 / KEEP).item()}
    assert abs(float((masks > 0).float().mean()) - KEEP) < 0.01  # 10836 draws: sd 0.0044
    assert not torch.equal(masks[:, 0], masks[:, 1])  # steps draw apart
    assert not torch.equal(masks[0], masks[1])  # and rows


def test_a_steps_mask_does_not_depend_on_its_block_but_on_the_seed():
    alone = triton_loss.step_masks(SEED, 5, 1, BATCH, SIZE, KEEP, DEVICE)
    block = triton_loss.step_masks(SEED, 2, 6, BATCH, SIZE, KEEP, DEVICE)
    assert torch.equal(alone[:, 0], block[:, 3])
    other = triton_loss.step_masks(SEED + 1, 5, 1, BATCH, SIZE, KEEP, DEVICE)
    assert float((other != alone).float().mean()) > 0.2


def test_step_dropout_takes_the_kernel_only_when_fused():
    torch.manual_seed(0)
    fused = StepDropout(0.3, BATCH, SIZE, DEVICE, fused=True)
    torch.manual_seed(0)
    plain = StepDropout(0.3, BATCH, SIZE, DEVICE)
    counter, before = OpCounter(), triton_kernels.LAUNCHES[0]
    with counter:
        masks = fused.masks(2, 4)
    assert triton_kernels.LAUNCHES[0] - before == 1 and counter.compute == 0
    assert torch.equal(masks[:, 1:3], fused.masks(3, 2))
    expected = torch.empty(BATCH, 4, SIZE, device=DEVICE)  # the torch path: a generator per step
    for i in range(4):
        generator = torch.Generator(device=DEVICE).manual_seed(plain.seed + 2 + i)
        expected[:, i].bernoulli_(0.7, generator=generator)
    assert torch.equal(plain.masks(2, 4), expected / 0.7)


# -- a whole training step ---------------------------------------------------------------------

def _model(kernels, dropout, products=False, readout_steps=None):
    torch.manual_seed(0)
    cfg = tiny_model_config(
        embedding_dim=12, dropout=dropout, init_uniform=0.3,
        encoder={"cell": "revgru", "layers": 2, "hidden": 14, "max_forget_bits": 3},
        decoder={"cell": "revgru", "layers": 2, "hidden": 14, "max_forget_bits": 3},
        attention={"context": "emb+slice", "size": 4, "precision": 16},
        reversible=ReversibleConfig(chunk_steps="4", kernels=kernels, fused_products=products,
                                    readout_steps=readout_steps))
    model = build_model(cfg, 301, 301)
    model.train()
    return model


def _training_step(model, batch):
    torch.manual_seed(1)
    model.zero_grad(set_to_none=True)
    output = model.training_loss(batch, label_smoothing=0.1)
    output.loss.backward()
    return output


@ON_CPU
@pytest.mark.parametrize("readout_steps", [None, 2])
def test_training_step_with_the_fused_readout_matches_the_tensor_path(readout_steps, make_batch,
                                                                      monkeypatch):
    batch = make_batch(src_lengths=[6, 4, 2], tgt_lengths=[5, 7, 3], seed=2, vocab=301)
    torch_model = _model("torch", 0.0, readout_steps=readout_steps)
    expected = _training_step(torch_model, batch)
    calls = []
    original = triton_loss.smoothed_nll
    monkeypatch.setattr(triton_loss, "smoothed_nll",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    fused_model = _model("triton", 0.0, readout_steps=readout_steps)
    got = _training_step(fused_model, batch)
    assert len(calls) == (2 if readout_steps is None else 4)  # 7 steps: chunks of 4 (read 2)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.nll, expected.nll, rtol=1e-5, atol=1e-5)
    for (name, ours), theirs in zip(fused_model.named_parameters(), torch_model.parameters()):
        assert (ours.grad is None) == (theirs.grad is None), name
        if ours.grad is not None:
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5, msg=name)


@ON_CPU
def test_training_step_draws_output_masks_by_kernel_and_reverses(make_batch):
    batch = make_batch(src_lengths=[6, 4, 2], tgt_lengths=[5, 7, 3], seed=2, vocab=301)
    model = _model("triton", 0.3)
    assert model.decoder.per_step_dropout
    before = triton_kernels.LAUNCHES[0]
    first = _training_step(model, batch)
    launches = triton_kernels.LAUNCHES[0] - before
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    second = _training_step(model, batch)  # same seeds: the same masks, loss and gradients
    assert torch.equal(first.loss, second.loss) and torch.isfinite(first.loss)
    assert all(torch.equal(a, p.grad) for a, p in
               zip(grads, [p for p in model.parameters() if p.grad is not None]))
    model.decoder.fused_readout = False  # the torch readout: other masks, one launch less each
    before = triton_kernels.LAUNCHES[0]
    plain = _training_step(model, batch)
    assert not torch.equal(plain.loss, first.loss)
    assert launches - (triton_kernels.LAUNCHES[0] - before) == 2 * 2  # loss + masks, 2 chunks
