"""The thin common layer of the toolkit: device, distributed, runs, config, checkpoints,
console, profiling and data. Only what two or more tools use lives here."""

from shared.errors import InputError, MissingExtraError, Preempted, ToolkitError

__version__ = "0.1.0"

__all__ = ["InputError", "MissingExtraError", "Preempted", "ToolkitError", "__version__"]
