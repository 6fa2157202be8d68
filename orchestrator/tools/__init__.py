"""SEARCHER knowledge tools: map search (offline gazetteer or HTTP backends) and guidebook retrieval."""
