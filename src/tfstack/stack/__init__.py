"""The serving stack's lifecycle: ``up``/``down`` plans and their application, status, smoke
requests, predict/inspect.
"""
