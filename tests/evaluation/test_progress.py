"""Long evaluations show progress (samples done, rate) through tqdm, and stay quiet when told to."""

import importlib

import pytest

from jointobj.toysets.oracle import OracleDenoiser

# the package exports the function under that name
evaluate_module = importlib.import_module("jointobj.evaluation.sweep")


class Recorder:
    """Stands in for tqdm: records its settings and the updates."""

    made: list["Recorder"] = []

    def __init__(self, total, disable=None, **kwargs):
        self.total, self.disable, self.kwargs, self.done = total, disable, kwargs, 0
        Recorder.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.done += n


@pytest.mark.parametrize("environment, disabled", [({}, None), ({"TQDM_DISABLE": "1"}, True)])
def test_sampling_reports_samples_done(environment, disabled, monkeypatch):
    # Fails if the sampling loop reports nothing (the old loop), counts wrong, or ignores TQDM_DISABLE (--no-progress).
    Recorder.made = []
    monkeypatch.setattr(evaluate_module, "tqdm", Recorder, raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    evaluate_module.evaluate(OracleDenoiser("likes_tennis"), ["likes_tennis"], ["random"], [1], samples=50,
                             batch_size=16, tv_repetitions=2)
    assert [(bar.total, bar.done, bar.disable, bar.kwargs.get("unit")) for bar in Recorder.made] == [
        (50, 50, disabled, "sample")]
