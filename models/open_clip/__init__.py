"""The open_clip adapter: CLIP models with ViT image towers and open_clip's text transformer."""
