"""The REST API (DRF only: serializers, views, auth, throttling, errors)."""
