"""Code that runs inside a worker's sandbox: stdlib only, imported there as ``runtime``."""
