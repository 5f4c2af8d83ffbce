"""`nmt train` whose write of one checkpoint stalls half-way, so a test can SIGKILL it mid-write.

    python killable_train.py CONFIG STALL_PREFIX MARKER
When torch.save writes to a temporary file whose name starts with STALL_PREFIX (e.g.
'.step-00000008.pt'), half of the serialized bytes are written and synced, MARKER is created and
the process sleeps until it is killed."""
import io
import os
import sys
import time
from pathlib import Path

import torch

real_save = torch.save
CONFIG, STALL_PREFIX, MARKER = sys.argv[1:4]


def stalling_save(obj, f, *args, **kwargs):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}")) if hasattr(f, "fileno") else ""
    if not name.startswith(STALL_PREFIX):
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    Path(MARKER).write_text(name, encoding="utf-8")
    time.sleep(600)


torch.save = stalling_save

if __name__ == "__main__":
    from nmt.cli import main

    main(["train", CONFIG, "--no-progress"])
