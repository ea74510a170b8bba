"""The worker bridge with a stand-in engine generator: events reach the GUI thread in order, Stop and
napari's quit() close the engine generator in the worker thread (where it writes its checkpoint), and
errors become notifications with their message while the runner returns to idle."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from napari_vesuvius_pt.engine.events import EpochDone, Failed, Finished, Started, StepDone
from napari_vesuvius_pt.errors import SegmentError
from napari_vesuvius_pt.ui.worker_bridge import IDLE, PAUSED, JobRunner


class FakeRun:
    """Yields like an engine run; on close writes a 'checkpoint' and records the closing thread."""

    def __init__(self, run_dir: Path, steps: int = 3, delay: float = 0.0, fail_with: Exception | None = None,
                 failed_event: bool = False, gate: threading.Event | None = None):
        self.run_dir = run_dir
        self.gate = gate  # when given, the run waits for it before its first event (a long first step)
        self.steps = steps
        self.delay = delay
        self.fail_with = fail_with
        self.failed_event = failed_event
        self.closed_in: threading.Thread | None = None
        self.started_in: threading.Thread | None = None

    def __call__(self):
        self.started_in = threading.current_thread()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.gate is not None:
            self.gate.wait(10.0)
        try:
            yield Started(run_dir=self.run_dir, device="cpu", total_steps=self.steps)
            for step in range(1, self.steps + 1):
                if self.delay:
                    time.sleep(self.delay)
                if self.fail_with is not None and step == 2:
                    raise self.fail_with
                if self.failed_event and step == 2:
                    yield Failed("loss is NaN at step 2; lower the learning rate", checkpoint=self.run_dir / "last.pt")
                    return
                yield StepDone(epoch=1, step=step, steps_per_epoch=self.steps, losses={"loss": 1.0 / step},
                               lr=0.1, samples_per_s=10.0)
            ckpt = self.run_dir / "epoch_001.pt"
            ckpt.write_text("weights")
            yield EpochDone(epoch=1, epochs=1, metrics={"loss": 0.3}, checkpoint=ckpt)
            yield Finished(run_dir=self.run_dir, summary={"epochs": 1})
        except GeneratorExit:
            self.closed_in = threading.current_thread()
            (self.run_dir / "last.pt").write_text("stopped weights")
            return


class Recorder:
    def __init__(self):
        self.events = []
        self.threads = set()
        self.outcomes = []
        self.states = []

    def on_event(self, event):
        self.events.append(event)
        self.threads.add(threading.current_thread())

    def on_done(self, outcome):
        self.outcomes.append(outcome)

    def on_state(self, state):
        self.states.append(state)


def _runner(rec: Recorder) -> JobRunner:
    return JobRunner("Test job", rec.on_event, rec.on_done, rec.on_state)


def test_events_arrive_in_order_in_the_gui_thread(qtbot, tmp_path):
    rec = Recorder()
    fake = FakeRun(tmp_path / "run")
    runner = _runner(rec)
    runner.start(fake)
    qtbot.waitUntil(lambda: bool(rec.outcomes), timeout=10_000)
    kinds = [type(e).__name__ for e in rec.events]
    assert kinds == ["Started", "StepDone", "StepDone", "StepDone", "EpochDone", "Finished"]
    assert rec.threads == {threading.main_thread()}
    assert fake.started_in is not threading.main_thread()  # the run itself ran in the worker thread
    outcome = rec.outcomes[0]
    assert outcome.status == "finished"
    assert outcome.checkpoint == tmp_path / "run" / "epoch_001.pt"
    assert outcome.device == "cpu"
    assert runner.state == IDLE and rec.states[0] == "running" and rec.states[-1] == IDLE


def test_stop_closes_the_engine_in_the_worker_thread(qtbot, tmp_path):
    rec = Recorder()
    fake = FakeRun(tmp_path / "run", steps=200, delay=0.02)
    runner = _runner(rec)
    runner.start(fake)
    qtbot.waitUntil(lambda: any(isinstance(e, StepDone) for e in rec.events), timeout=10_000)
    runner.stop()
    qtbot.waitUntil(lambda: bool(rec.outcomes), timeout=10_000)
    assert rec.outcomes[0].status == "stopped"
    assert fake.closed_in is not None and fake.closed_in is not threading.main_thread()
    assert (tmp_path / "run" / "last.pt").read_text() == "stopped weights"
    assert len([e for e in rec.events if isinstance(e, StepDone)]) < 200


def test_stop_while_paused_and_napari_quit_still_close_the_engine(qtbot, tmp_path):
    rec = Recorder()
    fake = FakeRun(tmp_path / "run", steps=200, delay=0.02)
    runner = _runner(rec)
    worker = runner.start(fake)
    qtbot.waitUntil(lambda: any(isinstance(e, StepDone) for e in rec.events), timeout=10_000)
    runner.toggle_pause()
    qtbot.waitUntil(lambda: runner.state == PAUSED, timeout=10_000)
    n = len(rec.events)
    qtbot.wait(200)
    assert len(rec.events) <= n + 1  # paused: at most the event already in flight
    worker.quit()  # what napari's activity dock and window close call
    qtbot.waitUntil(lambda: bool(rec.outcomes), timeout=10_000)
    assert rec.outcomes[0].status == "stopped"
    assert fake.closed_in is not None and fake.closed_in is not threading.main_thread()
    assert runner.wait(1.0)


def test_pause_pressed_during_a_step_then_stop_still_closes_the_engine(qtbot, tmp_path):
    """Pause is asked for while the engine is inside its first step (the worker has not paused yet), then
    Stop: the worker takes the pause after that step, and must still run on to the stop check."""
    rec = Recorder()
    gate = threading.Event()
    fake = FakeRun(tmp_path / "run", steps=200, delay=0.02, gate=gate)
    runner = _runner(rec)
    worker = runner.start(fake)
    qtbot.waitUntil(lambda: fake.started_in is not None, timeout=10_000)  # the engine is in its first step
    runner.toggle_pause()
    assert not worker.is_paused  # asked for, not taken
    runner.stop()
    gate.set()
    assert runner.wait(10.0), "the worker held on a pause taken after Stop"
    qtbot.waitUntil(lambda: bool(rec.outcomes), timeout=10_000)
    assert rec.outcomes[0].status == "stopped"
    assert fake.closed_in is not None and fake.closed_in is not threading.main_thread()
    assert (tmp_path / "run" / "last.pt").read_text() == "stopped weights"
    assert len([e for e in rec.events if isinstance(e, StepDone)]) == 0  # stopped at the first yield
    assert runner.state == IDLE


def test_user_error_is_a_notification_and_the_runner_can_start_again(qtbot, tmp_path, notifications):
    rec = Recorder()
    runner = _runner(rec)
    runner.start(FakeRun(tmp_path / "bad", fail_with=SegmentError("no layers found in /data/x; pick a segment folder")))
    qtbot.waitUntil(lambda: bool(rec.outcomes), timeout=10_000)
    assert rec.outcomes[0].status == "error"
    messages = [str(n.message) for n in notifications]
    assert any("no layers found in /data/x; pick a segment folder" in m for m in messages)
    assert not any("Traceback" in m for m in messages)
    # the widget is ready for another try: a second job runs to the end
    runner.start(FakeRun(tmp_path / "good"))
    qtbot.waitUntil(lambda: len(rec.outcomes) == 2, timeout=10_000)
    assert rec.outcomes[1].status == "finished"


def test_a_bug_shows_its_type_and_message(qtbot, tmp_path, notifications):
    rec = Recorder()
    runner = _runner(rec)
    runner.start(FakeRun(tmp_path / "bug", fail_with=ZeroDivisionError("division by zero")))
    qtbot.waitUntil(lambda: bool(rec.outcomes), timeout=10_000)
    assert rec.outcomes[0].status == "error"
    assert any("ZeroDivisionError: division by zero" in str(n.message) for n in notifications)


def test_failed_event_reports_message_and_last_good_checkpoint(qtbot, tmp_path, notifications):
    rec = Recorder()
    runner = _runner(rec)
    runner.start(FakeRun(tmp_path / "nan", failed_event=True))
    qtbot.waitUntil(lambda: bool(rec.outcomes), timeout=10_000)
    outcome = rec.outcomes[0]
    assert outcome.status == "failed"
    assert outcome.checkpoint == tmp_path / "nan" / "last.pt"
    assert any("loss is NaN at step 2" in str(n.message) and "last.pt" in str(n.message) for n in notifications)


def test_a_second_start_while_running_is_refused(qtbot, tmp_path):
    rec = Recorder()
    runner = _runner(rec)
    runner.start(FakeRun(tmp_path / "a", steps=100, delay=0.01))
    with pytest.raises(Exception, match="already running"):
        runner.start(FakeRun(tmp_path / "b"))
    runner.stop()
    qtbot.waitUntil(lambda: bool(rec.outcomes), timeout=10_000)


def test_closing_the_viewer_stops_its_job_in_the_worker_thread(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()  # the current viewer: napari registers the worker as one of its tasks
    rec = Recorder()
    fake = FakeRun(tmp_path / "run", steps=500, delay=0.02)
    runner = _runner(rec)
    runner.start(fake)
    qtbot.waitUntil(lambda: any(isinstance(e, StepDone) for e in rec.events), timeout=10_000)
    viewer.close()
    assert runner.wait(10.0)
    assert fake.closed_in is not None and fake.closed_in is not threading.main_thread()
    assert (tmp_path / "run" / "last.pt").read_text() == "stopped weights"


def test_device_memory_is_released_when_a_job_ends(qtbot, tmp_path, monkeypatch):
    import napari_vesuvius_pt.engine.device as device_module

    released = []
    monkeypatch.setattr(device_module, "release_device_memory",
                        lambda device: released.append((str(device), threading.current_thread())))
    rec = Recorder()
    runner = _runner(rec)
    runner.start(FakeRun(tmp_path / "run"), device="cpu")
    qtbot.waitUntil(lambda: bool(rec.outcomes), timeout=10_000)
    # once in the worker thread as the run ends, and once more in the GUI thread after collecting garbage
    assert [d for d, _ in released] == ["cpu", "cpu"]
    assert released[0][1] is not threading.main_thread() and released[1][1] is threading.main_thread()
