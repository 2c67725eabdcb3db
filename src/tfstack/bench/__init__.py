"""Benchmarks run by ``invoke bench <what>``: the runner and render benchmark (``runner``), ``up``,
``serve`` and ``rollout``, and the load generator.
"""
