"""The one exception type for user errors: the CLI turns it into one line and exit code 1."""


class FeatxError(Exception):
    """A problem with the user's input or environment, not a bug in featx."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line, for messages that must stay one line."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__
