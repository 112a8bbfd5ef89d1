"""The ``python`` kind: calls of a Python function serialised by the SDK's ``Executor``.

``calls`` is the byte format both sides share, ``kind`` the coordinator and worker side,
``runner`` the child process that unpickles and runs the calls.
"""

from __future__ import annotations

from parallel_pilot.kinds.python.kind import PythonKind, PythonParams

__all__ = ["PythonKind", "PythonParams"]
