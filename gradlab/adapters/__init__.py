"""Callbacks that drive `gradlab.watch` from a framework's own training loop.

- `gradlab.adapters.lightning.GradlabCallback`: a `lightning.pytorch.Callback`
  (`pip install 'gradlab[lightning]'`).
- `gradlab.adapters.huggingface.GradlabCallback`: a `transformers.TrainerCallback`
  (`pip install 'gradlab[huggingface]'`).

Each module imports its framework when it is imported; nothing here is imported by `gradlab`
itself, so `import gradlab` never imports Lightning or transformers.
"""
