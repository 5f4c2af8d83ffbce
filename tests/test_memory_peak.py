"""The live-bytes tracker against hand-computed allocations (CPU; float32 = 4 bytes)."""
import gc

import pytest
import torch

from nmt.memory_peak import LiveBytes, measure_step, prime_optimizer, storage_bytes


def test_a_known_sequence_of_allocations_and_releases_gives_the_exact_peak():
    a, b = torch.randn(10, 20), torch.randn(20, 30)
    with LiveBytes() as live:
        c = a @ b                    # 10 x 30 floats: 1200 bytes
        d = c + 1                    # 1200 more: 2400 live
        del c                        # 1200 live
        e = torch.zeros(100)         # 400: 1600 live
        del d, e                     # 0 live
        f = torch.ones(50, 20)       # 4000: the peak
        del f
    assert live.peak == 4000
    assert live.current == 0
    assert live.allocated == 1200 + 1200 + 400 + 4000
    assert live.storages == 4


def test_views_in_place_and_out_operations_add_nothing():
    x = torch.randn(8, 8)
    with LiveBytes() as live:
        y = x.exp()                  # 256 bytes
        views = [y.t(), y[2:], y.view(64), y.detach(), y.unsqueeze(0).expand(3, 8, 8)]
        y.mul_(2).add_(1)
        torch.mul(x, 2, out=y)
        x.add_(1)                    # an input's storage, created before the mode: not counted
    assert live.peak == 256 and live.storages == 1
    assert all(view.untyped_storage()._cdata == y.untyped_storage()._cdata for view in views)


def test_a_view_keeps_its_storage_alive_and_counted():
    with LiveBytes() as live:
        base = torch.zeros(1000)     # 4000 bytes
        tail = base[990:]
        del base
        gc.collect()
        assert live.current == 4000  # the slice still holds the whole storage
        del tail
        assert live.current == 0


def test_resize_of_a_tracked_storage_counts_its_growth():
    with LiveBytes() as live:
        t = torch.empty(10)          # 40 bytes
        t.resize_(100)               # grows to 400
    assert live.peak == 400
    assert live.current == 400
    del t


def test_python_data_through_torch_tensor_is_counted():
    with LiveBytes() as live:
        t = torch.tensor([1.0, 2.0, 3.0])
    assert live.peak == 12
    del t


def test_backward_of_a_tiny_linear_model_matches_the_hand_count():
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with LiveBytes() as live:
        y = linear(x).sum()          # addmm (2, 3): 24 bytes, freed once summed (not saved); y: 4
        y.backward()                 # ones_like 4; bias grad (3,): 12; weight grad (3, 4): 48
    # the peak: y, the incoming gradient 1.0 and both parameter gradients, all live at once
    assert live.peak == 4 + 4 + 12 + 48
    assert live.allocated == 24 + 4 + 4 + 12 + 48
    assert live.current == 4 + 12 + 48  # y and the gradients outlive backward
    assert linear.weight.grad is not None


def test_a_two_layer_network_saves_its_hidden_activation_until_backward():
    torch.manual_seed(0)
    first, second = torch.nn.Linear(5, 7, bias=False), torch.nn.Linear(7, 1, bias=False)
    x = torch.randn(3, 5)
    with LiveBytes() as live:
        hidden = first(x).relu()     # mm (3, 7): 84 bytes, freed (relu saves its output); relu 84
        loss = second(hidden).sum()  # mm (3, 1): 12, freed (mm saves its inputs); the loss: 4
        del hidden                   # still saved by relu and by second's mm
        assert live.current == 84 + 4
        loss.backward()
    # backward: the incoming 1.0 (4, held by SumBackward's expanded view), second's mm backward:
    # weight grad (1, 7) 28 and the hidden gradient (3, 7) 84; relu's backward: (3, 7) 84 while
    # its saved output is still live. That is the peak: 4 + 84 + 4 + 28 + 84 + 84 = 288. Then
    # first.weight's gradient (7, 5) 140 comes after the saved output and the (3, 7)s are freed.
    assert live.peak == 4 + 84 + 4 + 28 + 84 + 84
    assert live.current == 4 + 28 + 140


def test_at_peak_lists_what_was_live_at_the_peak():
    with LiveBytes(record=True) as live:
        a = torch.zeros(10)          # 40
        b = torch.zeros(20)          # 80: peak 120
        del a, b
        c = torch.zeros(5)
        del c
    rows = live.at_peak()
    assert [row["bytes"] for row in rows] == [80, 40]
    assert [row["shape"] for row in rows] == [[20], [10]]


def test_measure_step_counts_gradients_and_optimizer_temporaries_not_the_state():
    torch.manual_seed(0)
    model = _Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    prime_optimizer(model, optimizer)
    batch = _TinyBatch(torch.randn(6, 4))
    peak = measure_step(model, optimizer, batch)
    # weight (3, 4) 48 bytes, bias 12: resident with the batch (6 x 4 floats, 96 bytes)
    assert peak.parameter_bytes == 60 and peak.optimizer_state_bytes == 0
    assert peak.batch_bytes == 96
    assert peak.resident_bytes == 60 + 96
    # the step's peak holds at least both gradients (60 bytes) and the loss
    assert peak.peak_step_bytes >= 60 + 4
    assert peak.peak_total_bytes == peak.resident_bytes + peak.peak_step_bytes
    assert all(p.grad is None for p in model.parameters())  # dropped after the step


def test_adam_state_is_resident_after_priming_and_does_not_count_in_the_step():
    torch.manual_seed(0)
    model = _Tiny()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    prime_optimizer(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # 0-gradient step
    first = measure_step(model, optimizer, _TinyBatch(torch.randn(6, 4)))
    second = measure_step(model, optimizer, _TinyBatch(torch.randn(6, 4)))
    # exp_avg and exp_avg_sq per parameter (2 x 60 bytes) and a step counter each
    assert first.optimizer_state_bytes >= 120
    assert first.peak_step_bytes == second.peak_step_bytes


def test_storage_bytes_counts_each_storage_once():
    t = torch.zeros(10)
    assert storage_bytes([t, t[1:], t.view(2, 5)]) == 40


class _TinyBatch:
    def __init__(self, x):
        self.x = x
        self.num_tgt_tokens = x.shape[0]


class _Output:
    def __init__(self, loss):
        self.loss = loss


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def training_loss(self, batch, *, label_smoothing=0.0):
        return _Output(self.linear(batch.x).square().sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_tracker_is_within_ten_percent_of_max_memory_allocated():
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(),
                                torch.nn.Linear(2048, 512)).to(device)

    class Batch:
        x = torch.randn(4096, 512, device=device)
        num_tgt_tokens = 4096

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_loss(self, batch, *, label_smoothing=0.0):
            return _Output(self.net(batch.x).square().sum())

    wrapped = Model()
    optimizer = torch.optim.Adam(wrapped.parameters())
    prime_optimizer(wrapped, optimizer)
    peak = measure_step(wrapped, optimizer, Batch(), clip_grad_norm=1.0)
    assert peak.cuda_peak_step_bytes is not None
    assert abs(peak.peak_step_bytes - peak.cuda_peak_step_bytes) <= 0.1 * peak.cuda_peak_step_bytes
