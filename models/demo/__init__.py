"""Shipped demo models: the shapes-world scene generator and the ViT classifier trained on it."""
