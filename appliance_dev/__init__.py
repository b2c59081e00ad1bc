"""Development tools: the demo, stand-in central media, simulated fleets and loopback helpers.

Used by `make demo`, the tests and the benchmarks. Not part of the installed package: nothing here
reaches the Raspberry Pi image (see `[tool.setuptools.packages.find]` in pyproject.toml).
"""
