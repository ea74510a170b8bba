"""ui.in_turns: GUI work one step per event-loop turn, so other events (a repaint, a click) run between."""

from __future__ import annotations

from qtpy.QtCore import QTimer

from napari_vesuvius_pt.ui.in_turns import run_in_turns, run_now


def test_steps_run_one_per_turn_with_other_events_between(qtbot):
    order: list[str] = []

    def steps():
        for i in range(3):
            order.append(f"step {i}")
            QTimer.singleShot(0, lambda i=i: order.append(f"event after {i}"))  # queued behind this step
            yield i

    results = []
    run_in_turns(steps(), done=results.append)
    assert order == []  # nothing on the caller's turn
    qtbot.waitUntil(lambda: bool(results), timeout=5000)
    assert results == [2]
    # each step's queued event ran before the next step: the loop got control back between steps
    assert order == ["step 0", "event after 0", "step 1", "event after 1", "step 2", "event after 2"]


def test_cancel_stops_where_it_is_and_errors_go_to_failed(qtbot):
    made: list[int] = []
    cancel = []

    def steps():
        for i in range(100):
            made.append(i)
            if i == 2:  # the user starts a newer layout while this one is under way
                QTimer.singleShot(0, cancel[0])
            yield i

    finished = []
    cancel.append(run_in_turns(steps(), done=finished.append))
    qtbot.wait(200)
    assert made == [0, 1, 2] and not finished

    def broken():
        yield 1
        raise ValueError("bad layer")

    errors: list[Exception] = []
    run_in_turns(broken(), done=lambda _: errors.append(None), failed=errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert isinstance(errors[0], ValueError)
    assert run_now(iter([1, 2, 3])) == 3
