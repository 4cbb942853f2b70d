"""The two errors every rowrnn layer raises on purpose.

`InputError` is bad input (a file, an array, an option): callers fix their input.
`CheckFailed` is a check that ran and said no (parity, an accuracy bound): the input was
well-formed but the result is not trustworthy. The CLI maps them to exit codes 2 and 1.
"""


class InputError(ValueError):
    """Bad input: the message names the input and what is wrong with it."""


class CheckFailed(RuntimeError):
    """A validation check ran and failed (e.g. ONNX/Keras parity)."""
