"""Small factories for the console's widgets, each tagged with a stable CSS class."""

from __future__ import annotations

from html import escape
from typing import Any

import ipywidgets as widgets


def button(description: str, name: str, *, style: str = "", tooltip: str = "") -> Any:
    """Make a button labelled ``description`` with the class ``optin-<name>``."""
    widget = widgets.Button(
        description=description,
        button_style=style,
        tooltip=tooltip or description,
        layout=widgets.Layout(width="auto"),
    )
    return widget.add_class(f"optin-{name}")


def html_box(css_class: str, value: str = "") -> Any:
    """Make an HTML widget with the class ``css_class``."""
    return widgets.HTML(value=value).add_class(css_class)


def heading(text: str, level: int = 3) -> Any:
    """Make an HTML widget holding one heading."""
    return html_box("optin-heading", f"<h{level}>{escape(text)}</h{level}>")


def scroll_box(child: Any, css_class: str, max_height: str) -> Any:
    """Wrap ``child`` in a box that scrolls once it grows beyond ``max_height``."""
    layout = widgets.Layout(max_height=max_height, overflow="auto")
    return widgets.Box([child], layout=layout).add_class(css_class)
