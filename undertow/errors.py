"""The project's exceptions: one base class, one subclass per kind of configuration error.

Bad *data* never raises (it travels as :class:`~undertow.schema.DeadLetter` values); these are
for programming and configuration errors, each with a one-line message that names the file,
section, field or setting at fault, so that a command can print it and exit with status 2.
"""

from __future__ import annotations


class UndertowError(Exception):
    """Base class of the project's own exceptions."""


class ConfigError(UndertowError):
    """A setting is missing or invalid; the message is one line naming the variable."""


class StreamError(ConfigError):
    """A stream file cannot be used: names the file, the section and the field."""


class SpecError(StreamError, ValueError):
    """A feature spec that cannot be built: names the feature and what is wrong."""


class ModelError(ConfigError, ValueError):
    """A model expression that cannot be built: names the expression and what is wrong."""


class CheckpointError(UndertowError):
    """A checkpoint that cannot be read or written, or that belongs to another stream."""
