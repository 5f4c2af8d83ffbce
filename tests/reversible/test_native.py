"""The buffer's C kernels give the tensor code's results bit for bit, and fall back cleanly."""
import os
import subprocess
import sys

import pytest
import torch

from nmt.reversible import native
from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.fixed_point import FORGET_RADIX

R = FORGET_RADIX


def _pair(shape, **kwargs):
    fast = InformationBuffer(shape, native=True, **kwargs)
    reference = InformationBuffer(shape, native=False, **kwargs)
    assert fast._native is not None and reference._native is None
    return fast, reference


def _same(fast, reference):
    assert torch.equal(fast.head, reference.head)
    assert fast.pushed_steps == reference.pushed_steps
    assert torch.equal(fast.words(), reference.words())
    assert fast.pushed_words() == reference.pushed_words()
    assert fast.optimal_bits() == reference.optimal_bits()


def test_kernels_build_where_a_compiler_is():
    assert native.kernels() is not None  # CI machines have cc; elsewhere the tensor code runs


@pytest.mark.parametrize("magnitude", [2**26, 2**40, 2**60])  # 2**60: past the fast division
@pytest.mark.parametrize("width", [9, 5])  # 5: states narrower than the buffer
def test_forget_and_unforget_match_the_tensor_code(magnitude, width):
    generator = torch.Generator().manual_seed(width)
    fast, reference = _pair((6, 9))
    states = [torch.randint(-magnitude, magnitude, (6, width), generator=generator)]
    gates = []
    for step in range(60):
        n = torch.randint(1 if step % 3 else 2**(R - 3), 2**R + 1, (6, width), generator=generator)
        tag = "a" if step % 2 else "b"
        out = fast.forget(states[-1], n, tag=tag)
        assert torch.equal(out, reference.forget(states[-1], n, tag=tag))
        states.append(out)
        gates.append(n)
        _same(fast, reference)
    h = states.pop()
    for n in reversed(gates):
        back = fast.unforget(h, n)
        assert torch.equal(back, reference.unforget(h, n))
        assert torch.equal(back, states.pop())
        _same(fast, reference)
        h = back
    assert fast.is_initial() and reference.is_initial()


def test_unforget_interleaved_with_forget_matches():
    generator = torch.Generator().manual_seed(1)
    fast, reference = _pair((4, 8))
    h_fast = h_ref = torch.randint(-2**30, 2**30, (4, 8), generator=generator)
    history = []
    for step in range(200):
        if history and step % 3 == 2:
            n = history.pop()
            h_fast, h_ref = fast.unforget(h_fast, n), reference.unforget(h_ref, n)
        else:
            n = torch.randint(1, 2**R + 1, (4, 8), generator=generator)
            history.append(n)
            h_fast, h_ref = fast.forget(h_fast, n), reference.forget(h_ref, n)
        assert torch.equal(h_fast, h_ref)
        _same(fast, reference)


def test_without_words_the_results_are_the_same_and_nothing_is_kept():
    generator = torch.Generator().manual_seed(2)
    fast, reference = _pair((3, 7), keep_words=False)
    h = torch.randint(-2**25, 2**25, (3, 7), generator=generator)
    for _ in range(40):
        n = torch.randint(1, 2**R + 1, (3, 7), generator=generator)
        out = fast.forget(h, n)
        assert torch.equal(out, reference.forget(h, n))
        h = out
        assert torch.equal(fast.head, reference.head) and fast.words().numel() == 0
    assert fast.pushed_words() == reference.pushed_words() > 0


def test_bad_gates_are_refused_before_anything_changes():
    buffer = InformationBuffer((2, 3), native=True)
    h = torch.ones(2, 3, dtype=torch.int64)
    for bad in (0, 2**R + 1, -5):
        n = torch.full((2, 3), 512, dtype=torch.int64)
        n[1, 2] = bad
        with pytest.raises(ValueError, match="gate numerators"):
            buffer.forget(h, n)
        assert bool((buffer.head == buffer.lower).all()) and buffer.pushed_steps == 0


def test_a_reverse_step_that_needs_missing_words_is_an_error_not_a_crash():
    buffer = InformationBuffer((2, 3), native=True)
    h = torch.zeros(2, 3, dtype=torch.int64)
    identity = torch.full((2, 3), 2**R, dtype=torch.int64)
    h = buffer.forget(h, identity)  # spills nothing
    with pytest.raises(RuntimeError, match="more words than the stack holds"):
        buffer.unforget(h, torch.ones(2, 3, dtype=torch.int64))


def test_native_is_refused_where_it_cannot_run():
    with pytest.raises(RuntimeError, match="native=True"):
        InformationBuffer((2, 3), native=True, device_offsets=True)


def _fresh_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_disabled_or_unbuildable_kernels_fall_back_to_the_tensor_code(tmp_path):
    code = ("import torch, warnings; warnings.simplefilter('always')\n"
            "from nmt.reversible.buffer import InformationBuffer\n"
            "b = InformationBuffer((2, 3)); h = b.forget(torch.ones(2, 3, dtype=torch.int64), "
            "torch.full((2, 3), 300, dtype=torch.int64))\n"
            "print('native' if b._native else 'tensor', h.tolist())\n")
    disabled = _fresh_python(code, REVNMT_NATIVE="0")
    broken = _fresh_python(code, CC=str(tmp_path / "no-such-compiler"),
                           REVNMT_CACHE_DIR=str(tmp_path / "cache"))
    built = _fresh_python(code, REVNMT_CACHE_DIR=str(tmp_path / "cache2"))
    assert disabled.returncode == broken.returncode == built.returncode == 0, broken.stderr
    assert disabled.stdout.startswith("tensor") and broken.stdout.startswith("tensor")
    assert "C kernels are not available" in broken.stderr
    assert built.stdout.startswith("native")
    assert disabled.stdout.split(" ", 1)[1] == broken.stdout.split(" ", 1)[1] == built.stdout.split(" ", 1)[1]
    assert list((tmp_path / "cache2").glob("buffer_kernels-*.so"))
