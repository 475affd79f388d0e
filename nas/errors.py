"""User-input errors: raised with the bad value in the message, shown by the CLI as one line."""

from search_spaces.errors import NasError

__all__ = ["NasError"]
