"""Drive an engine generator on the terminal: a tqdm bar with the losses, a summary at the end.

Ctrl-C closes the generator, so the run writes its checkpoint at the next step boundary and returns.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from tqdm import tqdm

from napari_vesuvius_pt.engine.events import (
    EpochDone,
    Event,
    Failed,
    Finished,
    Stage,
    Started,
    StepDone,
    TilesDone,
)
from napari_vesuvius_pt.errors import RunError


def drive(events: Iterator[Event], label: str, quiet: bool = False) -> Finished | None:
    """Consume ``events``; return the Finished event (None if interrupted). A Failed event raises RunError."""
    bar: tqdm | None = None
    bar_label = ""
    finished: Finished | None = None
    out = sys.stderr
    try:
        for event in events:
            if isinstance(event, Stage):
                if bar is not None:
                    bar.close()
                    bar = None
                if not quiet:
                    print(f"\n[{event.index}/{event.total}] {event.name}", file=out)
            elif isinstance(event, Started):
                if not quiet:
                    print(f"{label}: running on {event.device}" + (f", run folder {event.run_dir}" if event.run_dir else ""), file=out)
                    if event.first_epoch:
                        print(f"{label}: resuming after epoch {event.first_epoch}", file=out)
            elif isinstance(event, StepDone):
                if bar is None or bar.total != event.steps_per_epoch or event.step == 1:
                    if bar is not None:
                        bar.close()
                    bar = tqdm(total=event.steps_per_epoch, desc=f"{label} epoch {event.epoch}", file=out,
                               disable=quiet, leave=False, dynamic_ncols=True)
                bar.set_postfix({k: f"{v:.4g}" for k, v in event.losses.items()} | {"samples/s": f"{event.samples_per_s:.1f}"})
                bar.update(event.step - bar.n)
            elif isinstance(event, TilesDone):
                if bar is None or bar_label != f"{label} {event.name}":
                    if bar is not None:
                        bar.close()
                    bar_label = f"{label} {event.name}"
                    bar = tqdm(total=event.total, desc=f"{label} {event.name}", file=out, disable=quiet,
                               leave=False, unit="tile", dynamic_ncols=True)
                bar.update(event.done - bar.n)
            elif isinstance(event, EpochDone):
                if bar is not None:
                    bar.close()
                    bar = None
                if not quiet:
                    metrics = "  ".join(f"{k}={v:.4g}" for k, v in event.metrics.items())
                    print(f"{label} epoch {event.epoch}/{event.epochs}: {metrics}", file=out)
            elif isinstance(event, Failed):
                raise RunError(event.message + (f" (last good checkpoint: {event.checkpoint})" if event.checkpoint else ""))
            elif isinstance(event, Finished):
                finished = event
    except KeyboardInterrupt:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # the run saves a checkpoint at the step boundary and returns
        if bar is not None:
            bar.close()
        print(f"{label}: stopped; completed epochs are kept and the run can be resumed", file=out)
        raise
    finally:
        if bar is not None:
            bar.close()
    return finished
