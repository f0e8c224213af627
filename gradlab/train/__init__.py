"""Training: the loop, the observer protocol and its events, the probe, and pretraining.

Imports `gradlab.config` and `gradlab.build`; prints nothing (observers turn events into
output or a record).
"""
