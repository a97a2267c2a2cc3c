"""colsim — cortical-column learning modules under pluggable plasticity rules.

Core package: types, config, registry, stream, column, rule (+ combinators), record,
simulate, checkpoint, cli. It knows no concrete model, rule or world; ``colsim.models``,
``colsim.rules`` and ``colsim.protocols`` register theirs when imported.
"""
__version__ = "0.1.0"
__all__ = ["__version__"]
