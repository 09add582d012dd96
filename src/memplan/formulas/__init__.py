"""Pure formulas: one small function per quantity, each citing its source.

Submodules are imported directly (``memplan.formulas.params``); nothing is imported here so
that loading one formula module stays cheap.
"""
