"""Named data sets. Importing this registers the built-in synthetic sets with DatasetCatalog."""
from .synthetic import BUILTIN_SYNTHETIC, register_synthetic, synthetic_root

__all__ = ["BUILTIN_SYNTHETIC", "register_synthetic", "synthetic_root"]
