"""colsim — cortical-column learning modules under pluggable plasticity rules.

Core package: types, config, registry, stream, column, rule (+ combinators), record,
simulate, checkpoint, device, loaded (load_column), cli. It knows no concrete model, rule or world; ``colsim.models``,
``colsim.rules`` and ``colsim.protocols`` register theirs when imported.

``colsim.load_column(RUN_DIR)`` (:mod:`colsim.loaded`) loads a trained column to step from Python;
it is imported on first use, so ``import colsim`` (and ``colsim.analysis``) stays free of torch.
"""
__version__ = "0.1.0"
__all__ = ["__version__", "load_column", "LoadedColumn", "StepResult"]


def __getattr__(name: str):
    if name in ("load_column", "LoadedColumn", "StepResult"):
        from colsim import loaded

        return getattr(loaded, name)
    raise AttributeError(f"module 'colsim' has no attribute {name!r}")
