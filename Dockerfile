# The worker image: the app and its dependencies, nothing else.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv

COPY pyproject.toml README.md ./
COPY app ./app
COPY tables ./tables
COPY agents ./agents
RUN pip install .

# The running worker's RocksDB tables live here. Under exactly once they are rebuilt from
# their changelog topics at every start, so this is scratch space: the durable state is
# in Kafka.
ENV DATA_DIR=/var/lib/stock-tracker WEB_PORT=6066
RUN mkdir -p /var/lib/stock-tracker
VOLUME ["/var/lib/stock-tracker"]
EXPOSE 6066

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=6 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:6066/health', timeout=2).status != 200)"

CMD ["faust", "-A", "app", "worker", "-l", "info"]
