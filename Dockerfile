# larpix-dqm: the exporter/monitor image used by docker-compose.yml.
#   docker build --build-arg BUILD_REVISION="$(git describe --always --dirty)" -t larpix-dqm .
#   docker run --rm -p 9767:9767 -v /path/to/live/data:/data:ro larpix-dqm
# Configure it with LARPIX_DQM_* variables (or LARPIX_DQM_CONFIG=<YAML file>) rather than serve's
# command-line options: the HEALTHCHECK (larpix-dqm healthcheck) reads the same variables, so it
# follows the port, address and scheme (https with a web config's tls_server_config) you set.
FROM python:3.11.7-slim-bookworm

ARG VERSION=0.1.0
# The git revision for build_info and the label; setup.py falls back to it when git is not there.
ARG BUILD_REVISION=unknown
LABEL org.opencontainers.image.title="larpix-dqm" \
      org.opencontainers.image.description="Live data-quality monitoring of LArPix pixel data, served to Prometheus" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/larpix-dqm/larpix-dqm" \
      org.opencontainers.image.documentation="https://github.com/larpix-dqm/larpix-dqm/blob/main/README.md" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${BUILD_REVISION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    NUMBA_CACHE_DIR=/opt/numba-cache

WORKDIR /src
COPY . .
# Dependencies pinned to the versions the tests ran against (deploy/requirements.lock). The
# geometry files shipped in the package get a stable path, /opt/larpix-geometry/, for
# --geometry / PIXEL_GEOMETRY_PATH (e.g. /opt/larpix-geometry/multi_tile_layout-2.4.16.yaml).
# The compiled ingest kernels are compiled once here into NUMBA_CACHE_DIR (given to the user that
# runs the exporter below: numba uses only a cache folder it can write), so containers load them in
# under a second instead of compiling them (about 5-10 s, in the background) at every start.
RUN pip install --constraint deploy/requirements.lock . \
    && python -c "from larpix_dqm.exporter.quality.accumulator import load_kernels; assert load_kernels(wait=600)" \
    && cd / && rm -rf /src \
    && ln -s "$(python -c 'from larpix_dqm.exporter.detector.geometry import packaged_layout; print(packaged_layout().parent)')" \
        /opt/larpix-geometry \
    && test -d /opt/larpix-geometry/
WORKDIR /

# Unprivileged user; /data (input) and /plots (PNG output) belong to it, so named volumes
# mounted there start out writable by it.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/larpix larpix \
    && mkdir -p /data /plots \
    && chown larpix:larpix /data /plots \
    && chown -R larpix:larpix /opt/numba-cache
USER larpix
WORKDIR /home/larpix

ENV LARPIX_DQM_INPUTS=/data \
    LARPIX_DQM_OUTPUT=/plots \
    LARPIX_DQM_PORT=9767 \
    LARPIX_DQM_LISTEN_ADDRESS=0.0.0.0
EXPOSE 9767
VOLUME ["/data", "/plots"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["larpix-dqm", "healthcheck"]

ENTRYPOINT ["larpix-dqm"]
CMD ["serve"]
