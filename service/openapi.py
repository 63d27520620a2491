"""``openapi.yaml`` at the repository root is generated from the app, never edited by hand."""

from __future__ import annotations

import yaml

from .app import create_app


def openapi_yaml() -> str:
    return yaml.safe_dump(create_app().openapi(), sort_keys=False, allow_unicode=True)
