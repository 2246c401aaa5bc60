"""Content negotiation with a fast path for what API clients send: no Accept header, */* or JSON."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

JSON = "application/json"
# Accept headers that always select the first renderer, JSON, as DRF's negotiation would.
_PLAIN_ACCEPTS = frozenset({"*/*", JSON, "application/*"})


class JsonFirstNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, minus its parsing of the Accept header when the answer is the JSON renderer
    anyway (7% of an uncached recommendation's web CPU, bench/serve_profile.py). Every other
    header, and ``?format=``, goes through DRF's own rules (e.g. 406 for ``Accept: text/html``)."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        accept = request.META.get("HTTP_ACCEPT", "*/*").strip()
        first = next(iter(renderers), None)
        plain = first is not None and first.media_type == JSON and accept in _PLAIN_ACCEPTS
        if plain and not format_suffix and self.settings.URL_FORMAT_OVERRIDE not in request.query_params:
            return first, JSON  # type: ignore[return-value]
        answer: Any = super().select_renderer(request, renderers, format_suffix)
        return answer  # type: ignore[no-any-return]
