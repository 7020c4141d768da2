"""One error hierarchy; the CLI maps each to a one-line message and an exit code.

Exit codes (the same for every command):
  0  completed (``check``/``gate``: passed)
  1  completed, verdict failed (``check``/``gate`` only)
  2  usage error (bad flag or argument, invalid config file or value)
  3  fatal error: the run could not be done (model not found, unreadable
     manifest or scores file, output conflict, ``--strict`` stop at bad input)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ERROR = 3


class SpatialRewardError(Exception):
    """Base class: a fatal error with a one-line, user-facing message."""

    exit_code = EXIT_ERROR


class ConfigError(SpatialRewardError):
    """A config file or value is invalid (unknown key, out-of-range value)."""

    exit_code = EXIT_USAGE


class ModelNotFoundError(SpatialRewardError):
    """The model is neither in the local cache nor reachable."""


class EngineError(SpatialRewardError):
    """The inference engine cannot serve the judge as configured (server
    unreachable, model not served, too small a context or image limit, missing
    API key, engine not installed)."""


class TorchPairError(EngineError):
    """The installed torch and torchvision are not a matching pair (e.g. a CPU
    torch with a CUDA-linked torchvision): torchvision's operators do not load."""


class OutputConflictError(SpatialRewardError):
    """The output file holds records that cannot be resumed under this config,
    or another run is writing it."""


class OutputIsInputError(SpatialRewardError):
    """An output path names one of the command's inputs: writing would destroy it."""

    exit_code = EXIT_USAGE


class ManifestError(SpatialRewardError):
    """The manifest as a whole cannot be read (missing file, not a folder layout)."""


class StrictStop(SpatialRewardError):
    """``--strict``: the run stopped at the first bad input."""


class SampleError(Exception):
    """One edit could not be judged; becomes an ``error`` record, never a score.

    ``stage`` is where it failed: ``input`` (manifest line or image), ``model``
    (generation raised) or ``parse`` (the answer is not a valid judgment).
    """

    stage = "sample"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"stage": self.stage, "message": self.message}


class InputError(SampleError):
    stage = "input"


class ModelError(SampleError):
    stage = "model"


class ParseError(SampleError):
    stage = "parse"


class ScoresFileError(SpatialRewardError, ValueError):
    """A results (scores) file cannot be read or holds an invalid record
    (a ``ValueError`` too: the file's content is a bad value)."""


def describe(exc: BaseException) -> str:
    """One line for an exception: its class and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__
