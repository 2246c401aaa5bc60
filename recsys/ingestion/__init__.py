"""One ingestion engine for API batches and files: rules, readers, one writer with two ways in, reports.

``rules`` (pure: what an event must be), ``readers`` (CSV, JSON Lines, API batches → columns),
``writer`` (every SQL statement that stores users, items and events; arrays or COPY), ``events``
and ``documents`` (the entry points), ``report`` (what an ingestion did).
"""
