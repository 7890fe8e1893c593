"""The one model the view lists."""

from __future__ import annotations

from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=80)
    price_cents = models.IntegerField()
    score = models.IntegerField(db_index=True)

    class Meta:
        app_label = "djangosite"
