"""Fused Triton kernels, each next to a pure-torch reference of identical semantics.

Triton is imported lazily (only when a Triton backend is chosen), so importing this package
needs nothing beyond torch. Modules:

- :mod:`kernels.logprob_entropy`: per-row statistics and the gradient of vocab-parallel token
  log-probs and entropy (torch reference, backend dispatch).
- :mod:`kernels.logprob_entropy_triton`: the Triton kernels behind it.
"""
