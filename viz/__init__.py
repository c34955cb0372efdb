"""Diagrams and plots of recorded graphs (installed as tinygraph.viz)."""
