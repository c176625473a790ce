"""The shipped demo: the shapes world (scenes, masks, captions), the demo models' weights and their loaders."""
