"""Deadlines on every phase of a request, so a slow or silent client cannot hold a worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fleet.settings import Settings
from fleet.waitress_api import FleetChannel

# How often the connection deadlines are checked.
SWEEP_EVERY = 0.5


class Deadlines:
    """Close connections that hold a worker's resources without sending a request in time.

    As nginx's client_header_timeout and client_body_timeout and Apache's
    mod_reqtimeout (body=20,MinRate=500) do: a silent connection is closed
    after FLEET_SILENT_TIMEOUT, a request head must arrive within
    FLEET_HEADER_TIMEOUT of its first byte, a body within FLEET_BODY_TIMEOUT
    plus a second per FLEET_BODY_MIN_RATE bytes. Idle keep-alive connections
    are waitress's channel_timeout; a paused response (its client reads none
    of it) is closed after as long; a connection lingering after its last
    response, after LINGER. Run by the thread holding the event loop,
    which alone writes every field here.
    """

    def __init__(self, settings: Settings) -> None:
        self.silent = settings.silent_timeout
        self.head = settings.header_timeout
        self.body = settings.body_timeout
        self.rate = float(settings.body_min_rate)
        self.send = settings.channel_timeout
        self.next_sweep = 0.0
        self.closed = {"silent": 0, "head": 0, "body": 0, "send": 0}  # counted for metrics to come

    def _body_allowance(self, channel: FleetChannel, request: Any) -> float:
        return self.body + channel.body_received(request) / self.rate

    def sweep(self, channels: Iterator[FleetChannel], now: float) -> None:
        if now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_EVERY
        wall = time.time()
        for channel in channels:
            if channel.lingered_out(now):
                channel.close_now()
                continue
            if channel.owes_response():
                if channel.paused() and self.send and wall - channel.last_traffic() >= self.send:
                    self.closed["send"] += 1
                    channel.close_now()
                continue  # otherwise the server, not the client, is behind
            request = channel.arriving()
            if request is None:
                if not channel.spoke and self.silent and now - channel.accepted_at >= self.silent:
                    self.closed["silent"] += 1
                    channel.close_now()
            elif not channel.head_complete(request):
                if self.head and now - channel.head_started >= self.head:
                    self.closed["head"] += 1
                    channel.time_out()
            elif self.body and now - channel.body_started >= self._body_allowance(channel, request):
                self.closed["body"] += 1
                channel.time_out()
