"""The app's input error: ``FieldError`` names the form field or API argument it is about (shown in the toast)."""

from __future__ import annotations

__all__ = ["FieldError"]


class FieldError(ValueError):
    """Bad input; ``field`` names the UI field / API argument (shown in the toast)."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        text = message if message.startswith(field_name) else f"{field_name}: {message}"
        super().__init__(text)
