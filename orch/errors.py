"""Exception tree of orch; the HTTP status lives on the class.

OrchError (500)
├── ValidationError (400)       bad input a client sent
├── Unauthorized (401)
├── NotFound (404)
├── MethodNotAllowed (405)
├── Conflict (400)              a valid request the current state refuses
├── PayloadTooLarge (413)
├── StorageError (503)          the state store could not write
├── NotLeader (503)             a leader-only write from a server that no longer leads
├── Unavailable (503)           a capacity limit is reached (UI streams)
├── DriverError (500)           a task driver could not start or stop a task
├── DataDirInUse (500)          another orch process holds the data dir (at start)
└── BadGateway (502)            a node the server relays to is unreachable
"""


class OrchError(Exception):
    """Raised for any orch failure; the root of the tree."""

    status = 500

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_dict(self) -> dict:
        return {"error": self.message, **self.extra}


class ValidationError(OrchError):
    """Raised when a request body or job file is malformed."""

    status = 400


class Unauthorized(OrchError):
    """Raised when a request lacks the right bearer token."""

    status = 401


class Forbidden(OrchError):
    """Raised when a caller may not act for what it names (another node's id)."""

    status = 403


class NotFound(OrchError):
    """Raised when a job, node, allocation or evaluation does not exist."""

    status = 404


class MethodNotAllowed(OrchError):
    """Raised when a route exists but not for that method."""

    status = 405


class Conflict(OrchError):
    """Raised when a valid request is refused by the current state."""

    status = 400


class AlreadyDispatched(Conflict):
    """A dispatch whose idempotency token a child of the parent already has."""

    def __init__(self, child):
        super().__init__(f"job {child.job_id} was dispatched with this idempotency token")
        self.child = child


class PayloadTooLarge(OrchError):
    """Raised when a request body exceeds the limit."""

    status = 413


class StorageError(OrchError):
    """Raised when the state store cannot write; nothing stored is lost."""

    status = 503


class DataDirError(OrchError):
    """Raised when a process cannot take its data dir (made, opened or locked)."""


class DataDirInUse(DataDirError):
    """Raised when another live orch process holds the data dir's lock."""


class NotLeader(OrchError):
    """Raised when a leader-only write (a plan commit) comes from a deposed leader."""

    status = 503


class Unavailable(OrchError):
    """Raised when the server is at a capacity limit (open UI streams); try later."""

    status = 503


class DriverError(OrchError):
    """Raised when a driver cannot start, signal or inspect a task."""

    status = 500


class BadGateway(OrchError):
    """Raised when a node the server relays to cannot be reached."""

    status = 502
