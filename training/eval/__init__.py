"""The one home for measuring what ships: metrics, the bundle-level cross-validation through the
runtime (:mod:`training.eval.bundle_cv`), and the helpers it is built from.

``training.protocol`` (representation-learning protocol) and ``training.probe`` (probes on frozen
features) stay where they are and are measured with the same metrics.
"""
