"""colsim.rules — installed as a subpackage of `colsim` (see docs/architecture.md)."""
if __name__ != "colsim.rules":  # guard: the folder must not be importable under its bare name
    raise ImportError("import colsim.rules, not 'rules': the rules/ folder installs as colsim.rules (pip install -e .)")

from colsim.rules import (  # noqa: E402,F401
    backprop, consolidation, espp, espp_bptt, frozen, layerwise, lpl, metaplastic, rate_matched, replay, sparse_coding,
    supervised_bptt,
)
