"""conure's version (a leaf module: the build keys its cache on it while the package is still importing)."""

__version__ = "0.1.0"
