"""mammo_tl: Faster R-CNN for mammograms that learns from unannotated negative images.

Importing the package registers its components with detectron2's registries
(``TopLikelihoodRPN``, ``SuspectedTargetROIHeads``) and the synthetic datasets with DatasetCatalog.
"""
from .compat import check_detectron2, known_warnings_quiet

with known_warnings_quiet():  # detectron2's modules are imported here, and warn on import with torch >= 2.10
    check_detectron2()
    from .config import add_mammo_tl_config, get_mammo_tl_cfg  # noqa: F401
    from . import modeling  # noqa: F401  (registers PROPOSAL_GENERATOR and ROI_HEADS)
    from . import data  # noqa: F401  (registers datasets)

__version__ = "0.1.0"


def check_install() -> None:
    """Used by `make install`: the package imports and its components are registered."""
    from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY, ROI_HEADS_REGISTRY

    assert "TopLikelihoodRPN" in PROPOSAL_GENERATOR_REGISTRY
    assert "SuspectedTargetROIHeads" in ROI_HEADS_REGISTRY
    print(f"mammo_tl {__version__}: detectron2 components registered")
