"""Diagrams and plots of recorded graphs (installed as tinygraph.viz)."""
from .plots import plot_gradient_flow, plot_gradient_heatmap, plot_loss_curve  # noqa: E402,F401  (matplotlib loads lazily)
from .stepper_html import draw_step, stepper_html  # noqa: E402,F401  (installs the renderer behind Event.diagram)
from .diagrams import (draw_circuit, draw_graph, draw_unfolded, folded_networkx, to_networkx,
                       unfolded_networkx)  # noqa: E402,F401
from .render import RenderError, render_svg, save, use_graphviz_pure  # noqa: E402,F401
