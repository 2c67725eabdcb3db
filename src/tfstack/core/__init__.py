"""Small shared leaf modules: atomic file writes with diffs (``files``), TF Serving text protos
(``textproto``).
"""
