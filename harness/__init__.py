"""kedit-harness: evaluate knowledge editors on (cross-lingual) editing tasks."""

from harness.api import Edit, EditRequest, Probe, Record
from harness.runner import apply_edit, run

__all__ = ["Edit", "EditRequest", "Probe", "Record", "apply_edit", "run"]
__version__ = "0.1.0"
