"""Optional integrations, the only place that imports ``flwr`` or ``ray``: ``compat.flower``
(``pip install 'fedkit[flower]'``, both directions of Flower interoperability)."""
