"""Scenario files: the schema, loading with clear errors, and building an experiment."""

from fedkit.scenario.load import ScenarioError, apply_overrides, dump, load, validate
from fedkit.scenario.schema import Scenario

__all__ = ["Scenario", "ScenarioError", "apply_overrides", "dump", "load", "validate"]
