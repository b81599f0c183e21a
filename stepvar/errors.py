"""The one exception type users see.

Library code raises StepvarError (or a subclass) for anything caused by the user's
input or files: the CLI prints its message as one line and exits non-zero, so the
message must name the argument or file and what was expected.
"""


class StepvarError(Exception):
    """A user-facing error: bad input, a bad file, an impossible configuration."""


class CheckpointError(StepvarError):
    """A checkpoint that cannot be read or does not match the chosen architecture."""


class ConfigError(StepvarError):
    """An invalid model, schedule or pruning configuration."""
