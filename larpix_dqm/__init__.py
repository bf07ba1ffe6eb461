"""larpix-dqm's one import package: ``larpix_dqm.exporter`` (reading, quality, metrics, the server, the CLI) and
``larpix_dqm.plots`` (the plot plugins and their drawing); importing it imports neither."""
