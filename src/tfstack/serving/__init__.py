"""Talking to a TF Serving server: REST and gRPC clients (``client``), protos without TensorFlow
(``protos``), wait strategies (``waiting``).
"""
