"""Progress output: a bar on a terminal, whole lines in a log, nothing with progress=False."""

import io
import sys

import pytest

from tvm_lut.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def log(capsys):
    """stderr as a log: pytest's capture, which is not a terminal (set per test phase, so not monkeypatched)."""
    assert not sys.stderr.isatty()
    return lambda: capsys.readouterr().err


def test_a_log_gets_a_line_per_tenth_and_no_carriage_return(log):
    assert list(progress_bar(range(37), desc="fitting", unit="stage", progress=True)) == list(range(37))
    text = log()
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) == 10
    assert lines[0].startswith("fitting: 4/37 stage in ") and lines[-1].startswith("fitting: 37/37 stage in ")


def test_a_manual_bar_resumed_and_stopped_early_says_where_it_stopped(log):
    bar = progress_bar(total=100, initial=50, desc="learning", unit="step", progress=True)
    for _ in range(15):
        bar.update()
        bar.set_postfix(loss="0.25")
    bar.close()
    bar.close()
    text = log()
    lines = text.splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["learning: 60/100 step", "learning: 65/100 step"]
    assert lines[-1].endswith("loss=0.25")


def test_context_manager_and_empty_work(log):
    with progress_bar(total=3, desc="training", progress=True) as bar:
        bar.update(3)
    assert list(progress_bar([], desc="nothing", progress=True)) == []
    text = log()
    assert text.splitlines()[0].startswith("training: 3/3 it in ")
    assert len(text.splitlines()) == 1


def test_progress_false_prints_nothing(log):
    assert list(progress_bar(range(5), desc="quiet", progress=False)) == list(range(5))
    assert log() == ""


def test_a_terminal_gets_tqdm(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    from tqdm import tqdm

    bar = progress_bar(range(2), desc="bar", progress=True)
    assert isinstance(bar, tqdm)
    bar.close()
