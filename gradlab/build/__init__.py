"""Builders: datasets, models (MLP, recurrent) with their probe points, initialisers,
optimisers, schedules, losses, and the memory budget computed from the real builders.

Plain functions keyed by the config's names; imports `gradlab.config` and torch, never the
trainer.
"""
