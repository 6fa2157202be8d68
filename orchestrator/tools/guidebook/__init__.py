"""The guidebook: open default clues, a FAISS index over their CLIP embeddings, and its build CLI."""
