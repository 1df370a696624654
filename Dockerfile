FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 GATEWAY_CONFIG=/app/config/gateway.toml
WORKDIR /app

COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home /app gateway \
    && mkdir -p /app/data /app/logs \
    && chown gateway:gateway /app/data /app/logs
COPY config ./config

USER gateway
EXPOSE 8080 8081
VOLUME ["/app/data", "/app/logs"]

# The admin listener answers /health (it checks the store); it is bound to 127.0.0.1 inside the container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8081/health', timeout=2).status == 200 else 1)"

STOPSIGNAL SIGTERM
CMD ["gateway", "serve"]
