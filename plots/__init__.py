"""Plot plugins: the built-in plots of larpix-dqm and the base class for new ones.

Every public module of this package (and of each ``--plugin-dir``) is searched for plot
classes; the class name is the plot name. Two forms are accepted (see ``docs/plots.md``):

- predecessor style: any class with ``__call__(self, filename, fh, fig=None) -> Figure``,
  ``fh`` being an in-memory h5py file whose ``packets`` dataset holds the new packets;
- ``Plot`` subclasses, which get the decoded packet array and the running statistics.

Modules whose name starts with an underscore are helpers, not plugins.
"""

from plots.base import Plot, PlotContext

__all__ = ["Plot", "PlotContext"]
