"""The LArPix Grafana dashboards as code: one module per dashboard over the shared builders in ``panels``."""
