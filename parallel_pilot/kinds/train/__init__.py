"""The ``train`` kind: DiLoCo training of a user's PyTorch model across workers.

``kind`` (plan, results; no torch), ``params`` (job parameters, output paths), ``tasks``
(the worker's side of a task), ``child`` (the child process that runs torch and the user's
code), ``optimizer_state`` (AdamW state as safetensors), ``spec`` (loading the user's file)
and ``diloco`` (the inner and outer optimisation).
"""

from parallel_pilot.kinds.train.kind import TrainKind

__all__ = ["TrainKind"]
