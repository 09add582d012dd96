"""Estimators: a spec and a setup in, a :class:`memplan.report.Report` out.

Submodules are imported directly (``memplan.estimate.params``); nothing is imported here.
"""
