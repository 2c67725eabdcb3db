"""The ``org.tfstack.*`` label names tfstack puts on containers, images, networks and volumes.

One namespace, so cleanup can select everything tfstack made and nothing else. Values are set where
the objects are made; only the names live here.
"""

from __future__ import annotations

LABEL_NAMESPACE = "org.tfstack"

# Every object: which project made it, and that tfstack did.
LABEL_PROJECT = f"{LABEL_NAMESPACE}.project"
LABEL_MANAGED = f"{LABEL_NAMESPACE}.managed"
# Temporary containers and build helpers: what the object is for (verifier, cpu-probe, bench...).
LABEL_ROLE = f"{LABEL_NAMESPACE}.role"
LABEL_MODEL = f"{LABEL_NAMESPACE}.model"
LABEL_SESSION = f"{LABEL_NAMESPACE}.session"
LABEL_BENCH = f"{LABEL_NAMESPACE}.bench"
# Rendered compose services: the digest of what they were rendered from.
LABEL_SPEC_DIGEST = f"{LABEL_NAMESPACE}.spec-digest"
LABEL_FRONTEND_DIGEST = f"{LABEL_NAMESPACE}.frontend-digest"
# Images: Dockerfile stage, TensorFlow version and instruction-set target.
LABEL_STAGE = f"{LABEL_NAMESPACE}.stage"
LABEL_TENSORFLOW_VERSION = f"{LABEL_NAMESPACE}.tensorflow-version"
LABEL_ISA = f"{LABEL_NAMESPACE}.isa"
LABEL_ISA_FLAGS = f"{LABEL_NAMESPACE}.isa.flags"  # space-separated cpuinfo flag names needed
LABEL_ISA_ARCH = f"{LABEL_NAMESPACE}.isa.arch"  # "x86_64" | "aarch64"
# Optimized TF Serving builds: what was built, from what, how.
LABEL_TFSERVING_VERSION = f"{LABEL_NAMESPACE}.tfserving.version"
LABEL_TFSERVING_SOURCE = f"{LABEL_NAMESPACE}.tfserving.source"
LABEL_BUILD_OPTIONS = f"{LABEL_NAMESPACE}.build.options"
LABEL_BUILD_DATE = f"{LABEL_NAMESPACE}.build.date"
LABEL_BUILD_TOOLCHAIN = f"{LABEL_NAMESPACE}.build.toolchain"
