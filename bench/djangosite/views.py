"""The view: the 20 best-scored items of 1,000, through the ORM and a template."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from bench.djangosite.models import Item


def top_items(request: HttpRequest) -> HttpResponse:
    items = Item.objects.order_by("-score", "id")[:20]
    return render(request, "djangosite/items.html", {"items": items})
