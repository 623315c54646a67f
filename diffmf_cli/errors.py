"""Typed errors. The CLI turns each into one line on stderr and an exit code; nothing below the CLI prints."""


class DiffMFError(Exception):
    """Base class for every error diffmf raises on purpose."""

    exit_code = 1


class InputError(DiffMFError):
    """A user-supplied file or value is unusable (unreadable image, size mismatch, bad pair list...)."""

    exit_code = 1


class UsageError(DiffMFError):
    """The command line cannot be carried out at all (missing folder, bad option combination)."""

    exit_code = 2


class CheckpointError(DiffMFError):
    """A weights file is missing, corrupt, or does not match the code's config."""

    exit_code = 2
