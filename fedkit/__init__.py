"""fedkit: federated and split learning from one scenario file."""

__version__ = "0.1.0"


def load_model(run_dir: str) -> object:
    """The trained ``torch.nn.Module`` of a run directory (see ``fedkit.experiment.load_model``)."""
    from fedkit.experiment import load_model as _load

    return _load(run_dir)
