"""navig.export."""
