"""Fine-tuning pre-trained models where only adapters travel (issue 14's core).

:func:`fedkit.peft.model.build` is the model factory of PEFT scenarios: the frozen base (a local
transformers folder, or one of fedkit's own models) wrapped so that only the trainable tensors
(LoRA factors, ``train_also`` modules) form its state; :mod:`fedkit.peft.export` writes a run's
result as a peft adapter folder or a merged transformers folder and loads it back.
"""

from fedkit.peft.model import FACTORY, Trainable, build

__all__ = ["FACTORY", "Trainable", "build"]
