"""Named data sets. Importing this registers the built-in synthetic sets with DatasetCatalog; real data
sets are registered by calling the ``register_*`` functions (or tools/prepare_dataset.py)."""
from .cbis_ddsm import load_cbis_ddsm, register_cbis_ddsm
from .common import DatasetError, SkipReport, check_patient_disjoint, export_coco
from .csv_import import load_csv_dataset, register_csv_dataset
from .inbreast import load_inbreast, register_inbreast
from .synthetic import BUILTIN_SYNTHETIC, register_synthetic, synthetic_root
from .vindr import load_vindr_mammo, register_vindr_mammo

__all__ = ["BUILTIN_SYNTHETIC", "register_synthetic", "synthetic_root", "load_cbis_ddsm", "register_cbis_ddsm",
           "load_vindr_mammo", "register_vindr_mammo", "load_inbreast", "register_inbreast", "load_csv_dataset",
           "register_csv_dataset", "DatasetError", "SkipReport", "check_patient_disjoint", "export_coco"]
