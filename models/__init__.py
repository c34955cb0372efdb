"""Recurrent models built on tinygraph (installed as tinygraph.models)."""
