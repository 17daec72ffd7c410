"""fedkit: federated and split learning from one scenario file."""

__version__ = "0.1.0"
