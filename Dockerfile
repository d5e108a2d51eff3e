# flapguard: one image for the worker, the notifier and the forwarders
# (`docker run IMAGE worker|notify|forward ...`). The default command is the worker.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams ./streams
# The worker image keeps the RocksDB store; plotting and the demo broker stay out.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[rocksdb]'

FROM python:3.11-slim
# A fixed non-root uid, so that mounted volumes can be given to it.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/flapguard --create-home flapguard
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER flapguard
WORKDIR /var/lib/flapguard
ENV PYTHONUNBUFFERED=1 \
    FLAPGUARD_DATA_DIR=/var/lib/flapguard/data \
    FLAPGUARD_METRICS_ADDRESS=0.0.0.0:9464
EXPOSE 9464
# The worker's /metrics answers once it runs; other commands disable this check
# in docker-compose.yml.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=4)"]
ENTRYPOINT ["flapguard"]
CMD ["worker"]
