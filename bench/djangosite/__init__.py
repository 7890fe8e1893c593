"""A tiny Django project for the benchmark: one model, one view, one template, SQLite.

``bench.apps:django`` serves it. The database is made by ``python -m
bench.djangosite.makedb`` (bench/run.py does it before a run) and then only read:
it is opened ``mode=ro&immutable=1``, so any number of worker processes and threads
read it at once without locks, even from a read-only file system.
"""
