"""One colour, marker and line style per row name, the same in every plot of every report.

A row keeps its look across plots (CLIP-Fed is black in the curves, the scatter and ``cost.png``)
because the mapping is fixed by name: the controls, every registered defense and the suites'
variants in a fixed order, each at its own index into 40 colours (tab20, then tab20b; CLIP-Fed
alone is black) and its own marker. Within one plot no two rows share a colour or a marker: a
name outside that order, or one whose colour or marker another row of the plot already took,
gets the first free one. Line styles cycle with the same index, so that two rows with identical
curves still show as two lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# matplotlib's filled and line markers, then regular polygons and stars (sides, style, angle)
MARKERS: tuple[Any, ...] = ("o", "s", "D", "^", "v", "<", ">", "p", "h", "X", "P", "*", "d", "8", "H", "1", "2",
                            "3", "4", "+", "x", "|", "_", (7, 0, 0), (5, 1, 0), (6, 1, 0), (7, 1, 0), (8, 1, 0),
                            (5, 2, 0), (8, 0, 22.5))
LINESTYLES = ("-", "--", "-.", ":")
CLIPFED_COLOR = "black"


def _palette() -> list[Any]:
    """40 distinct colours, the strong ones first: tab20's and tab20b's darker halves of each pair,
    then their lighter halves (so rows next to each other in the order differ in hue, not shade)."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    halves: list[list[Any]] = [[], []]
    for name in ("tab20", "tab20b"):
        cmap = matplotlib.colormaps[name]
        assert isinstance(cmap, ListedColormap)  # both are listed colormaps of 20 RGB tuples
        assert isinstance(cmap.colors, Sequence)
        halves[0] += list(cmap.colors)[0::2]
        halves[1] += list(cmap.colors)[1::2]
    return halves[0] + halves[1]


def canonical_order() -> list[str]:
    """Every row name a suite or ``bench-cost`` can produce, in the order that fixes its style."""
    from clipfed.bench.suites import CONTROL_DEFENSES, SUITES
    from clipfed.defense import list_defenses

    names = ["clipfed", *CONTROL_DEFENSES, "fedavg", *list_defenses()]
    names += [v for suite in SUITES.values() for v in suite.variants]
    return list(dict.fromkeys(names))


def row_styles(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Matplotlib keyword arguments (``color``, ``marker``, ``linestyle``, ``linewidth``) per row
    name, unique in colour and in marker among ``names`` (up to 41 colours and 30 markers)."""
    palette = _palette()
    order = canonical_order()
    used_colors: set[int] = set()
    used_markers: set[int] = set()
    styles: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        home = order.index(name) if name in order else len(order) + len(styles)
        color: Any = CLIPFED_COLOR
        if name != "clipfed":  # CLIP-Fed's black is outside the palette, so no other row can take it
            index = _first_free(home, len(palette), used_colors)
            used_colors.add(index)
            color = palette[index]
        marker = _first_free(home, len(MARKERS), used_markers)
        used_markers.add(marker)
        styles[name] = {"color": color, "marker": MARKERS[marker], "linestyle": LINESTYLES[home % len(LINESTYLES)],
                        "linewidth": 2.5 if name.startswith("clipfed") else 1.3}
    return styles


def _first_free(start: int, size: int, used: set[int]) -> int:
    """The first index from ``start`` (wrapping) not in ``used``; ``start`` itself when all are
    (more rows than styles: the plot then repeats one, rather than failing)."""
    for step in range(size):
        if (index := (start + step) % size) not in used:
            return index
    return start % size
