"""The web platform mounted in the BentoML service: train, diagnose, models (see :mod:`.app`)."""

from systemhealer.web.app import create_app

__all__ = ["create_app"]
