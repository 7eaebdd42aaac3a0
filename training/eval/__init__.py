"""The one home for measuring: metrics (UA, ECE, confusion), the bundle-level cross-validation
through the runtime (:mod:`training.eval.bundle_cv`, the headline figure of what ships) and the
helpers it is built from (recordings of one person, the runtime's window features, window-to-clip
scoring), the representation-learning protocol (:mod:`training.eval.protocol`), probes on frozen
features (:mod:`training.eval.probe`) and the one-fold sweep and feature diagnostic.
"""
