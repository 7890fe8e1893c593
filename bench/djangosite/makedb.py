"""Create the benchmark's SQLite database: the Item table and 1,000 rows, the same every time.

    build/bench-venv/bin/python -m bench.djangosite.makedb

Written to a temporary file renamed into place, so a server never opens half a database.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    os.environ["BENCH_DJANGO_DB_WRITE"] = "1"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.djangosite.settings")
    import django
    from django.conf import settings

    from bench.djangosite import settings as ours

    tmp = ours.DB_PATH.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    settings.DATABASES["default"]["NAME"] = str(tmp)
    django.setup()
    from django.db import connection

    from bench.djangosite.models import Item

    with connection.schema_editor() as editor:
        editor.create_model(Item)
    Item.objects.bulk_create(
        Item(name=f"item {i:04d}", price_cents=(i * 7919) % 10_000, score=(i * 104_729) % 1_000)
        for i in range(1000)
    )
    connection.close()
    os.chmod(tmp, 0o644)
    tmp.replace(ours.DB_PATH)
    print(f"makedb: wrote {ours.DB_PATH} (1000 items)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
