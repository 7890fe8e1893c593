from __future__ import annotations

from django.urls import path

from bench.djangosite.views import top_items

urlpatterns = [path("", top_items)]
