"""colsim.protocols — installed as a subpackage of `colsim` (see docs/architecture.md)."""
if __name__ != "colsim.protocols":  # guard: the folder must not be importable under its bare name
    raise ImportError("import colsim.protocols, not 'protocols': the protocols/ folder installs as colsim.protocols (pip install -e .)")
from colsim.protocols import affine_digits  # noqa: F401,E402  (registers the world)
from colsim.protocols import image_files  # noqa: F401,E402  (registers the world)
from colsim.protocols import saccades  # noqa: F401,E402  (registers the world)
from colsim.protocols import objects3d  # noqa: F401,E402  (registers the world)
from colsim.protocols import split_images  # noqa: F401,E402  (registers the world)
from colsim.protocols import permuted_images  # noqa: F401,E402  (registers the world)
from colsim.protocols import echospike_samples  # noqa: F401,E402  (registers the world)
