"""The one error type user input raises; the CLI turns it into a single line and exit code 2."""


class NasError(ValueError):
    """Bad user input: the message names the offending value (and the allowed ones)."""
