"""The fused kernels compile for an H100/H200 (sm_90) as their launch wrappers would run them there
(libdevice activations, fp fusion off, their block sizes and warps) -- ahead of time, with
Triton's bundled LLVM and ptxas, no GPU needed -- and spill no registers. The interpreter tests
check what they compute; this checks the GPU build accepts it."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_kernels_compile_for_sm90():
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        pytest.skip("this Triton has no CUDA backend")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "nmt.reversible.triton_kernels", "90"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 18 and all("cubin=" in line for line in lines)
    assert all(line.endswith(" spilled=0") for line in lines), "\n".join(lines)  # ptxas -v
