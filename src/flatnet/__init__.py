"""flatnet: the Kubernetes pod network on the Linux kernel's own parts."""

__all__ = ["__version__"]
__version__ = "0.1.0"
