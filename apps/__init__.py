"""Applications built on tinygraph, its models and its diagrams (installed as tinygraph.apps).

They sit above the engine: the engine never imports them.
"""
