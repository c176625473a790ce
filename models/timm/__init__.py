"""The timm adapter: ViT classifiers (``timm.models.VisionTransformer``)."""
