"""Helpers shared by the tests and the benchmarks (bench/*.py), kept out of the product packages.

They live under tests/ because the test suite is their main user and must always carry them; the bench
scripts put the repository root on sys.path and import them from here (tests never import from bench/).
"""
