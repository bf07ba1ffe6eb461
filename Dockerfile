# larpix-dqm: the exporter/monitor image used by docker-compose.yml.
#   docker build -t larpix-dqm .
#   docker run --rm -p 9767:9767 -v /path/to/live/data:/data:ro larpix-dqm
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

WORKDIR /src
COPY . .
# The geometry files shipped in the package get a stable path, /opt/larpix-geometry/, for
# --geometry / PIXEL_GEOMETRY_PATH (e.g. /opt/larpix-geometry/multi_tile_layout-2.4.16.yaml).
RUN pip install . \
    && cd / && rm -rf /src \
    && ln -s "$(python -c 'from exporter.geometry import packaged_layout; print(packaged_layout().parent)')" \
        /opt/larpix-geometry \
    && test -d /opt/larpix-geometry/
WORKDIR /

# Unprivileged user; /data (input) and /plots (PNG output) belong to it, so named volumes
# mounted there start out writable by it.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/larpix larpix \
    && mkdir -p /data /plots \
    && chown larpix:larpix /data /plots
USER larpix
WORKDIR /home/larpix

EXPOSE 9767
VOLUME ["/data", "/plots"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9767/-/healthy', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["larpix-dqm"]
CMD ["serve", "-i", "/data", "--port", "9767", "--listen-address", "0.0.0.0", "-o", "/plots"]
