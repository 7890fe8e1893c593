"""Settings of the benchmark's Django project: production-like (DEBUG off), nothing written."""

from __future__ import annotations

import os
from pathlib import Path

DB_PATH = Path(__file__).resolve().with_name("bench.sqlite3")
# NOTE: makedb sets this to create the file; every server opens it read-only and
# immutable (no locking, no journal): safe for concurrent readers, and the worker's
# sandbox may mount it read-only.
_WRITE = os.environ.get("BENCH_DJANGO_DB_WRITE") == "1"

SECRET_KEY = "bench-only-not-a-secret"  # noqa: S105 - nothing here is signed or stored
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["bench.djangosite"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "bench.djangosite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DB_PATH) if _WRITE else f"file:{DB_PATH}?mode=ro&immutable=1",
        # NOTE: one connection per thread kept across requests, as a site tuned for
        # throughput runs; the figure then measures the view, not sqlite3.connect().
        "CONN_MAX_AGE": None,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
LOGGING_CONFIG = None
