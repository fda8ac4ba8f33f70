"""Conformance suite: the paper's properties checked against ANYONE's Flow-DPPO kernel and loss.

    python -m flowdppo.conformance --kernel MODULE:CALLABLE --loss MODULE:CALLABLE [--adapter NAME] …

adapters.py maps common calling conventions to the two canonical callables; properties.py holds the
properties (each returns a report.Result); `check(subject)` runs them from Python (a user's pytest suite:
`check(Subject(kernel=make_kernel(...), loss=make_loss(...))).assert_ok()`); docs/conformance.md shows
a run on a user's trainer.
"""
from .adapters import KernelOut, Subject, dtype_store, load_callable, make_kernel, make_loss
from .properties import PROPERTY_NAMES, Context, Settings, check, run_properties
from .report import Report, Result, format_report

__all__ = ["KernelOut", "Subject", "dtype_store", "load_callable", "make_kernel", "make_loss", "PROPERTY_NAMES",
           "Context", "Settings", "check", "run_properties", "Report", "Result", "format_report"]
