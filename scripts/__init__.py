"""Scripts beside the package, run as modules from the repository root: benchmarks/, studies/, tools/, and common
(their shared helpers)."""
