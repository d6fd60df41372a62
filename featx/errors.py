"""The one exception type for user errors: the CLI turns it into one line and exit code 1."""


class FeatxError(Exception):
    """A problem with the user's input or environment, not a bug in featx."""
