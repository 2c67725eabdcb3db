"""Images: base image and Debian mirror (``baseimage``), wheelhouse, the runtime image (``images``),
CPU ISA checks (``isa``), optimized TF Serving builds and their Bazel cache.
"""
