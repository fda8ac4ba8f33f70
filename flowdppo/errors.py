"""The project's own errors: each one a problem a person can act on, with a one-line message that names
what is wrong and how to fix it (the CLI prints it as `flowdppo: error: …` and exits with code 2).

    FlowDPPOError            base class; the CLI catches it (and ValueError)
      ConfigError            a config field is wrong: "config.<field>: <why>. Fix: <fix>"   (also a ValueError)
      RunDirError            the run directory cannot be used as asked (resume, lock, checkpoint, logs)
        CorruptLogError      a log line that is not a record, and not a torn last line
      DivergenceError        a non-finite loss, gradient or parameter stopped training

ConfigError and RunDirError are also ValueErrors, so code written as `except ValueError` keeps working.
"""
from __future__ import annotations


class FlowDPPOError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(FlowDPPOError, ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


class RunDirError(FlowDPPOError, ValueError):
    """The run directory (or a file in it) cannot be used as asked; the message says what is there."""


class CorruptLogError(RunDirError):
    """A JSONL / CSV log has an unreadable line that is not its last (a kill can only tear the last)."""


class DivergenceError(FlowDPPOError, RuntimeError):
    """Training produced a non-finite loss, gradient or parameter; the step was not applied."""


def one_line(message: str) -> str:
    """The message on one line (the CLI's contract): newlines and runs of spaces folded."""
    return " ".join(str(message).split())
