"""colsim.models — installed as a subpackage of `colsim` (see docs/architecture.md)."""
if __name__ != "colsim.models":  # guard: the folder must not be importable under its bare name
    raise ImportError("import colsim.models, not 'models': the models/ folder installs as colsim.models (pip install -e .)")

from colsim.models import seq_jepa  # noqa: E402,F401  (registers the "seqjepa" model)
from colsim.models import spiking  # noqa: E402,F401  (registers the "spiking" model; needs the `spiking` extra at build)
from colsim.models import classifier  # noqa: E402,F401  (registers the supervised "classifier" model)
from colsim.models import echospike  # noqa: E402,F401  (registers EchoSpike's plain spiking MLP "echospike")
