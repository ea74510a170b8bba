"""Runs ``vesuvius-pt`` in a subprocess for the fault tests, with a pause at a chosen moment so that the
test can kill it exactly there (nothing in the package is changed; only timing is controlled).

    python faults_harness.py ARGS...     (the CLI's arguments)

Environment:
- ``FAULT_MODE=step``: after optimizer step ``FAULT_STEP`` ("EPOCH,STEP") touch ``FAULT_MARK`` and wait
  until ``FAULT_MARK.go`` exists (the test signals the process meanwhile);
- ``FAULT_MODE=write``: at the ``FAULT_COUNT``-th rename onto a file named ``FAULT_FILE`` (the last step
  of an atomic checkpoint write: the temporary file is complete, the target not yet replaced) touch
  ``FAULT_MARK`` and sleep (the test kills the process there).
"""

from __future__ import annotations

import os
import sys
import time

import torch

torch.set_num_threads(1)

MODE = os.environ.get("FAULT_MODE", "")
MARK = os.environ.get("FAULT_MARK", "")


def _wait_for_go() -> None:
    go = MARK + ".go"
    for _ in range(2400):
        if os.path.exists(go):
            return
        time.sleep(0.05)


if MODE == "step":
    from napari_vesuvius_pt.engine import loop

    _real_step = loop.train_step
    _where = tuple(int(v) for v in os.environ["FAULT_STEP"].split(","))

    def _step(t, task, it, epoch, step):
        out = _real_step(t, task, it, epoch, step)
        if (epoch, step) == _where:
            open(MARK, "w").close()
            _wait_for_go()
        return out

    loop.train_step = _step
elif MODE == "write":
    _real_replace = os.replace
    _name = os.environ["FAULT_FILE"]
    _count = [int(os.environ.get("FAULT_COUNT", "1"))]

    def _replace(src, dst, *args, **kwargs):
        if os.path.basename(str(dst)) == _name:
            _count[0] -= 1
            if _count[0] == 0:
                open(MARK, "w").close()
                time.sleep(120)
        return _real_replace(src, dst, *args, **kwargs)

    os.replace = _replace

from napari_vesuvius_pt.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
