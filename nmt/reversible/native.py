"""The information buffer's integer loops in C (`buffer_kernels.c`), compiled on first use.

A forget or unforget step is some twenty elementwise tensor operations over int64 (shifts, masks,
an int64 division, a select of the spilled words); on a CPU they cost more than the float gate
arithmetic around them. The C version does each step in one or two passes with the same results
bit for bit. It is built with the system C compiler the first time a buffer needs it (well under
a second), cached per source and CPU under ~/.cache/revnmt (or $REVNMT_CACHE_DIR), and loaded with
ctypes: no build step at install time. Without a compiler, or with REVNMT_NATIVE=0, buffers use
the tensor code, which gives the same results more slowly. CPU tensors only (CUDA keeps the tensor
code and its device-side offsets).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("buffer_kernels.c")
# -ffp-contract=off: the fused gate steps do each float operation as the tensor code does
# (no fused multiply-adds); -lm: rint, where the compiler does not inline it
FLAGS = ("-O3", "-march=native", "-std=c99", "-ffp-contract=off", "-shared", "-fPIC")
LIBRARIES = ("-lm",)
_UNSET = object()
_library = _UNSET


class Kernels:
    """ctypes bindings of one compiled `buffer_kernels.c`."""

    def __init__(self, library: ctypes.CDLL):
        pointer, int64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self._forget = library.revnmt_forget
        self._forget.restype = int64
        self._forget.argtypes = [pointer, pointer, pointer, int64, int64, int64, c_int, c_int,
                                 pointer, pointer, pointer]
        self._unforget = library.revnmt_unforget
        self._unforget.restype = int64
        self._unforget.argtypes = [pointer, pointer, pointer, int64, int64, int64, c_int, c_int,
                                   int64, pointer, int64, pointer]
        self.quantize = library.revnmt_quantize
        self.quantize.restype = None
        self.quantize.argtypes = [pointer, int64, *[ctypes.c_float] * 6, pointer, pointer, pointer]
        self.gated_forget = library.revnmt_gated_forget
        self.gated_forget.restype = int64
        self.gated_forget.argtypes = [pointer, pointer, pointer, pointer, int64, pointer, pointer,
                                      pointer, int64, int64, int64, c_int, c_int, pointer, pointer,
                                      pointer, pointer]
        self.lstm_backward = library.revnmt_lstm_backward
        self.lstm_backward.restype = None
        self.lstm_backward.argtypes = [int64, int64, *[pointer] * 16]
        self.lstm_backward_kept = library.revnmt_lstm_backward_kept
        self.lstm_backward_kept.restype = None
        self.lstm_backward_kept.argtypes = [int64, int64, pointer, pointer, pointer, pointer, int64,
                                            *[pointer] * 7]
        self.from_fixed = library.revnmt_from_fixed
        self.from_fixed.restype = None
        self.from_fixed.argtypes = [pointer, int64, pointer]
        self.gru_backward_a = library.revnmt_gru_backward_a
        self.gru_backward_a.restype = None
        self.gru_backward_a.argtypes = [int64, int64, int64, *[pointer] * 9]
        self.gru_backward_b = library.revnmt_gru_backward_b
        self.gru_backward_b.restype = None
        self.gru_backward_b.argtypes = [int64, int64, int64, *[pointer] * 6]
        self.gated_unforget = library.revnmt_gated_unforget
        self.gated_unforget.restype = int64
        self.gated_unforget.argtypes = [pointer, pointer, pointer, pointer, int64, pointer, int64,
                                        pointer, int64, int64, int64, c_int, c_int, int64, pointer,
                                        int64, pointer]

    def forget(self, h: Tensor, n: Tensor, head: Tensor, words: Tensor, hist: Tensor, *,
               word_bits: int, forget_radix: int) -> Tuple[Tensor, int]:
        """One forget step of (rows, cols) int64 h and n (contiguous) on the int32 `head` rows
        (row stride head.stride(0)), writing the spilled words from words[0] (room for h.numel()
        + 1) and counting each n in `hist`. Returns (h * n / 2**R as int64, words written)."""
        out = torch.empty_like(h)
        rows, cols = h.shape
        count = self._forget(h.data_ptr(), n.data_ptr(), head.data_ptr(), head.stride(0), rows,
                             cols, word_bits, forget_radix, words.data_ptr(), hist.data_ptr(),
                             out.data_ptr())
        if count < 0:
            raise ValueError(f"gate numerators must be in [1, {2**forget_radix}]")
        return out, count

    def unforget(self, h: Tensor, n: Tensor, head: Tensor, words: Tensor, top: int, *,
                 word_bits: int, forget_radix: int, lower: int) -> Tuple[Tensor, int]:
        """The inverse step, popping from words[0:top]. Returns (h before the forget, new top)."""
        out = torch.empty_like(h)
        rows, cols = h.shape
        top = self._unforget(h.data_ptr(), n.data_ptr(), head.data_ptr(), head.stride(0), rows,
                             cols, word_bits, forget_radix, lower, words.data_ptr(), top,
                             out.data_ptr())
        if top == -1:
            raise ValueError(f"gate numerators must be in [1, {2**forget_radix}]")
        if top < 0:
            raise RuntimeError("information buffer: this reverse step needs more words than the "
                               "stack holds (its gates are not those of the matching forward step)")
        return out, top


def kernels() -> Optional[Kernels]:
    """The compiled kernels, or None when disabled (REVNMT_NATIVE=0) or not buildable here (the
    first failure warns once; later calls return None without retrying)."""
    global _library
    if os.environ.get("REVNMT_NATIVE", "1") == "0":
        return None
    if _library is _UNSET:
        try:
            _library = Kernels(ctypes.CDLL(str(_build())))
        except (OSError, subprocess.SubprocessError, AttributeError) as error:
            warnings.warn(f"RevNMT: the buffer's C kernels are not available ({error}); using the "
                          "tensor code (same results, slower)", RuntimeWarning, stacklevel=2)
            _library = None
    return _library


def _build() -> Path:
    """The shared library for this source, compiler and CPU: from the cache, or compiled into it
    (to a temporary name, then renamed: processes starting together do not see half a file)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise OSError("no C compiler found (set CC)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + repr((compiler, FLAGS, LIBRARIES, _cpu_signature())).encode()).hexdigest()[:16]
    target = _cache_dir() / f"buffer_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(handle)
    try:
        result = subprocess.run([compiler, *FLAGS, "-o", temporary, str(SOURCE), *LIBRARIES],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise OSError(f"{compiler} failed: {result.stderr.strip()[:500]}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def _cache_dir() -> Path:
    configured = os.environ.get("REVNMT_CACHE_DIR")
    if configured:
        return Path(configured)
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "revnmt"


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU model and flags (a cache shared by different
    machines must not hand one machine's build to another)."""
    text = platform.machine() + platform.processor() + sys.platform
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))]
        text += "".join(sorted(set(lines)))
    except OSError:
        pass
    return text
