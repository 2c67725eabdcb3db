"""The Docker engine and Compose: engine bootstrap (``engine``), compose command lines, containers
and ports (``compose``).
"""
