"""exdd: ExDD (Explicit Dual Distribution) surface-defect detection served on NVIDIA Triton."""

__version__ = "0.1.0"
