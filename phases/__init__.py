"""Pure training units (models, losses, metrics, phases): config and data in, artifacts and scores out."""
