"""Scratch prototypes of changes to fleet's worker, measured by tune.py; never product code."""
