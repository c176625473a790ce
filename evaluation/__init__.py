"""How far the maps can be trusted: the evaluation protocols (docs/METHODS.md, "The evaluation protocols")."""
