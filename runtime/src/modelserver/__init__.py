"""modelserver: a drop-in tensorflow_model_server on the TensorFlow pip wheel.

Independent of tfstack: it never imports it, and tfstack never depends on it being the runtime.
"""

__version__ = "0.1.0"
