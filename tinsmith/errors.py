"""One error hierarchy for the whole service.

Each class also subclasses the builtin it replaces, so callers that catch ``ValueError`` or
``LookupError`` keep working. Only the HTTP server maps these to status codes and future
failure categories.
"""


class TinsmithError(Exception):
    """Root of every error tinsmith raises on purpose."""


class UserInputError(TinsmithError, ValueError):
    """The request is malformed or asks for something impossible; the client must change it."""


class NotFoundError(TinsmithError, LookupError):
    """A named object (model, sampler, checkpoint, future) does not exist."""


class ConflictError(TinsmithError):
    """The request collides with existing state (duplicate name, reused seq_id)."""


class TooLargeError(UserInputError):
    """A request exceeds a configured size limit (HTTP 413); the
    message names the field and limit."""


class TooManyRequestsError(TinsmithError):
    """A tenant has too many unfinished requests (HTTP 429: the SDK backs off and retries)."""


class ConfigurationError(TinsmithError, ValueError):
    """The server configuration is invalid; the message names the field."""


class WorkerError(TinsmithError, RuntimeError):
    """A trainer or sampler actor failed or died while serving a request (retryable)."""
