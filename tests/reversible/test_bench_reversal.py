"""`nmt bench reversal` reports exactness, gradient agreement, counted memory and timing."""
import json

import pytest
import torch

from nmt.cli import main
from nmt.reversible.checks import check_reversal
from nmt.reversible.sequence import ReversibleRNN


def _bench(capsys, *flags):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "reversal", *flags])
    return exit_info.value.code, capsys.readouterr()


@pytest.mark.parametrize("cell,storage", [("revgru", ["--slice", "3", "--precision", "16"]),
                                          ("revlstm", ["--proj", "2"])])
def test_json_report(capsys, cell, storage):
    code, captured = _bench(capsys, "--cell", cell, "--layers", "2", "--hidden", "9", "--batch",
                            "3", "--steps", "6", "--max-forget-bits", "2", "--repeats", "1",
                            "--json", *storage)
    assert code == 0
    report = json.loads(captured.out)
    assert report["reversal_exact"] and report["buffer_restored"] and report["loss_identical"]
    assert report["max_grad_abs_diff"] < 1e-5
    parts = 2 if cell == "revlstm" else 1
    assert report["normal_bits"] == 32 * 9 * 6 * 3 * 2 * parts
    assert report["ratio_used"] == pytest.approx(report["normal_bits"] / report["used_bits"])
    assert report["time_ratio"] == pytest.approx(
        report["time_reversible_s"] / report["time_reference_s"])


def test_text_report_and_bad_flags(capsys):
    code, captured = _bench(capsys, "--hidden", "6", "--batch", "2", "--steps", "3",
                            "--repeats", "1", "--max-forget-bits", "none")
    assert code == 0
    assert "bit-exact reversal:       yes" in captured.out
    assert "ratio" in captured.out
    code, captured = _bench(capsys, "--hidden", "6", "--proj", "4")
    assert code == 2
    assert captured.err.strip() == ("nmt bench: error: proj storage of 4 units exceeds the half "
                                    "state of 3 units")


def test_check_reversal_notices_a_broken_reverse():
    torch.manual_seed(60)
    rnn = ReversibleRNN("revgru", 3, 6, num_layers=2)
    inputs = torch.randn(2, 8, 3)
    assert check_reversal(rnn, inputs).exact
    original = rnn.cells[1].reverse

    def off_by_one_at_step_5(x, state, buffer, mask, *, restored=None, tape=None):
        previous = original(x, state, buffer, mask, restored=restored, tape=tape)
        off_by_one_at_step_5.calls += 1
        if off_by_one_at_step_5.calls == 3:  # the reverse of step 5 of 8
            previous = (previous[0] + 1,) + previous[1:]
        return previous

    off_by_one_at_step_5.calls = 0
    rnn.cells[1].reverse = off_by_one_at_step_5
    result = check_reversal(rnn, inputs)
    assert not result.exact and result.first_mismatch == 5


def test_exit_status_is_1_when_the_gradients_disagree(capsys, monkeypatch):
    import nmt.reversible.backprop as backprop

    original = backprop.add_weight_grads

    def off_by_a_little(param_grads, *args):  # a wrong reversible weight gradient
        original(param_grads, *args)
        for grad in param_grads:
            if grad is not None:
                grad.add_(1e-2)

    flags = ("--hidden", "6", "--batch", "2", "--steps", "3", "--repeats", "1", "--json")
    code, captured = _bench(capsys, *flags)
    assert code == 0 and json.loads(captured.out)["grads_agree"]
    monkeypatch.setattr(backprop, "add_weight_grads", off_by_a_little)
    code, captured = _bench(capsys, *flags)
    report = json.loads(captured.out)
    assert code == 1 and not report["grads_agree"]
    assert report["reversal_exact"] and report["loss_identical"]  # only the gradients are wrong
