# A slim image of the relay. Its command is `relay serve --config /config/relay.yaml`;
# the cache lives on the /cache volume.
#
# BASE: any image with Python 3.11+ and its venv module (the default; or, built without a
# registry, a Debian bookworm root file system with python3 and python3-venv). PIP_CERT: a CA
# bundle for pip, where the package index is reached through a proxy that needs one (mount it
# into the build); unset, pip uses its own.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/relay/venv/bin:$PATH

WORKDIR /opt/relay
COPY pyproject.toml README.md ./
COPY relay ./relay
# A venv of its own: the same on every base (a distribution's Python refuses system-wide pip
# installs), and only what serving needs: no test extras.
ARG PIP_CERT
RUN python3 -m venv /opt/relay/venv \
    && pip install . \
    && useradd --system --create-home --home-dir /home/relay relay \
    && mkdir -p /cache /config /state \
    && chown relay /cache /state

# Bake the embedded demo into the image: the container serves it offline, with no first-run wait.
RUN relay demo --dir /opt/relay/demo > /dev/null
COPY docker/relay.yaml /config/relay.yaml

USER relay
VOLUME ["/cache", "/state"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["relay", "serve", "--config", "/config/relay.yaml"]
