"""navig.client."""
