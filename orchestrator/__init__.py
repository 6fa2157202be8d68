"""navig.orchestrator."""
