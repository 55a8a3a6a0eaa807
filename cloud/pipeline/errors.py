"""Pipeline errors, grouped by origin.

* Bad input from the user (a missing directory, an unknown profile, a dataset with
  one class, a labels file that does not match the model): :class:`PipelineInputError`,
  a ``ValueError`` whose message says what to fix (HTTP 400, :mod:`cloud.errors`).
* A toolchain that failed on valid input (ONNX Runtime's quantizer, OpenVINO's
  converter): :class:`BuildToolError`, wrapping the third-party exception once.
"""

from __future__ import annotations

from cloud.errors import BadRequestError, EdgeFleetError


class PipelineInputError(BadRequestError):
    """The user's input cannot be used; the message says what to change."""


class BuildToolError(EdgeFleetError, RuntimeError):
    """A converter or quantizer failed on input that passed our checks."""
