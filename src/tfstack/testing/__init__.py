"""tfstack's test kit: TensorFlow Serving in tests, on testcontainers.

* :class:`TFServingContainer`: a temporary TF Serving container (official ``tensorflow/serving``
  or tfstack's runtime image; ``$TFSTACK_SERVING_IMAGE`` overrides) that is ready once every model
  version is AVAILABLE, with ``rest_url``, ``grpc_target``, ``predict``, ``classify``,
  ``regress`` and ``metadata``;
* :func:`stack_up` / :class:`StackHandle`: a whole spec brought up and down;
* a pytest plugin (installed with tfstack, entry point ``tfstack``) with the fixtures
  ``tfserving``, ``tfserving_options`` and ``tfstack_stack``.

See docs/testing.md for examples.
"""

from tfstack.testing.cleanup import SESSION_ID, remove_session, remove_stale
from tfstack.testing.container import (
    DEFAULT_IMAGE,
    IMAGE_ENV,
    ServingCalls,
    TFServingContainer,
    serving_image,
)
from tfstack.testing.stack import StackHandle, stack_up

__all__ = [
    "DEFAULT_IMAGE",
    "IMAGE_ENV",
    "SESSION_ID",
    "ServingCalls",
    "StackHandle",
    "TFServingContainer",
    "remove_session",
    "remove_stale",
    "serving_image",
    "stack_up",
]
