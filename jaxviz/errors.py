"""Errors that the CLI turns into exit code 2 with one clear line."""


class UsageError(ValueError):
    """Bad usage or bad config: an unknown model, layer, path or option value.

    The message must name the problem and, where there is a finite set, the valid choices.
    """


def unknown(kind: str, name: str, choices) -> UsageError:
    """A UsageError for an unknown `name` of `kind`, listing the valid choices."""
    return UsageError(f"unknown {kind} {name!r}; choose from: {', '.join(map(str, choices))}")
