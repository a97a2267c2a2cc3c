"""The parts of the run loop (:func:`colsim.simulate.run` is the schedule that calls them), one concept per file:

* :mod:`~colsim.sim.tick`          schedule steps 1-4 for one tick: the Step, the column, the rule, the finite check;
* :mod:`~colsim.sim.guard`         the finite-check guard: one fused gradient norm, the non-finite terms named;
* :mod:`~colsim.sim.evaluator`     in-run evaluation and the store schema of the ``evaluation`` and ``probe`` groups;
* :mod:`~colsim.sim.checkpointer`  checkpoints written on the schedule, and a checkpoint's state restored;
* :mod:`~colsim.sim.host`          host guards: signals, the garbage collector, malloc, the global RNGs;
* :mod:`~colsim.sim.progress`      the step rate, the ``on_step`` callback and the loop's own per-part timings;
* :mod:`~colsim.sim.diagnostics`   per-tick collapse diagnostics (and a circuit's per-column metric row);
* :mod:`~colsim.sim.summary`       ``summary.json``: matrices and forgetting / BWT / FWT of every read-out;
* :mod:`~colsim.sim.ensemble`      a seed ensemble: parameters stacked over seeds, the vmapped forward, each seed's
  RNG (its schedule is :mod:`colsim.simulate_ensemble`).

Nothing here imports :mod:`colsim.simulate`; importing this package imports none of its modules.
"""
