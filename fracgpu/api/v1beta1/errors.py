"""Errors raised when a shared document (annotation, CRD field, wire body) is malformed."""


class InvalidDocument(ValueError):
    """A document written by fracgpu or a user does not follow its contract; the message says where."""
