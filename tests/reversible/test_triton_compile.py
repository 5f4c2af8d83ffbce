"""The fused kernels compile for an H100/H200 (sm_90) as their launch wrappers would run them there
(libdevice activations, fp fusion off, their block sizes and warps) -- ahead of time, with
Triton's bundled LLVM and ptxas, no GPU needed -- and spill no registers (the fused-products
kernels at halves of 64 units; wider halves spill some, see triton_gru_products.py). The interpreter tests
check what they compute; this checks the GPU build accepts it.

Triton is imported only in the subprocess: imported here, at collection, it would be imported
before test_triton_kernels.py sets TRITON_INTERPRET, and its own library functions would then
not run under the interpreter."""
import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")


def test_kernels_compile_for_sm90():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "nmt.reversible.triton_kernels", "90"],
                            env=env, capture_output=True, text=True, timeout=300)
    if "No module named 'triton.backends.nvidia" in result.stderr:
        pytest.skip("this Triton has no CUDA backend")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 33 and all("cubin=" in line for line in lines)  # 15: fused products
    assert all(line.endswith(" spilled=0") for line in lines), "\n".join(lines)  # ptxas -v
