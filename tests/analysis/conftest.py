"""Synthetic run stores with the layout ``colsim run`` writes (docs/reference/store.md).

``make_run(name, **kw)`` writes a run folder under a temporary directory via
:func:`colsim.analysis._synthetic.write_synthetic_run` (small defaults: 3 phases, 96 samples,
4 views, 16 units) and returns its path. Session fixtures hold analysed runs shared by the
compare / dashboard / CLI tests.
"""
from __future__ import annotations

import pytest

from colsim.analysis._synthetic import write_synthetic_run

SMALL = dict(n_phases=3, steps_per_phase=120, n_samples=96, n_views=4, n_units=16, sample_chunk=32)


def write_run(path, **kw):
    """A small synthetic run at ``path`` (keyword arguments override :data:`SMALL`)."""
    return write_synthetic_run(path, **{**SMALL, **kw})


@pytest.fixture
def make_run(tmp_path):
    def make(name="run", **kw):
        return write_run(tmp_path / name, **kw)

    return make


@pytest.fixture(scope="session")
def sweep_runs(tmp_path_factory):
    """2 rules x 2 seeds, analysed (MLP probe off for speed); lpl seed 0 has a rising loss component."""
    from colsim.analysis.analyze import analyze_run

    root = tmp_path_factory.mktemp("sweep")
    paths = []
    for rule in ("backprop", "lpl+metaplastic"):
        for seed in (0, 1):
            p = write_run(root / f"{rule}_{seed}", rule=rule, seed=seed, rising_component=(rule != "backprop"
                                                                                            and seed == 0),
                          grad_spike_at=200 if seed == 1 else None)
            analyze_run(p, mlp="none")
            paths.append(p)
    return paths
