"""Training harness (PyTorch): data readers, preprocessing, encoders, pairwise contrastive
pretraining and probe evaluation. The runtime (edge_mer/) never imports this package."""
