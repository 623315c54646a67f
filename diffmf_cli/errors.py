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


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty): what an error
    message quotes from an exception that is not ours."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure: torch's CUDA OutOfMemoryError, Python's MemoryError, or a RuntimeError
    whose message says the CPU or GPU allocator ran out."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text
