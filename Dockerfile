# A slim image of the relay. Its command is `relay serve --config /config/relay.yaml`;
# the cache lives on the /cache volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/relay
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN pip install . \
    && useradd --system --create-home --home-dir /home/relay relay \
    && mkdir -p /cache /config \
    && chown relay /cache

# Bake the embedded demo into the image: the container serves it offline, with no first-run wait.
RUN relay demo --dir /opt/relay/demo > /dev/null
COPY docker/relay.yaml /config/relay.yaml

USER relay
VOLUME ["/cache"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["relay", "serve", "--config", "/config/relay.yaml"]
