"""The experiment file: schema and loader."""

from tinytwin.spec.load import apply_override, load_spec, validate_spec
from tinytwin.spec.schema import ExperimentSpec

__all__ = ["ExperimentSpec", "apply_override", "load_spec", "validate_spec"]
