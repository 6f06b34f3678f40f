# The jizhi image: every `jizhi` command (worker, publish, demo, allocator) on Python 3.11.
#   docker build -t jizhi .        (compose/docker-compose.yml builds it as jizhi:local)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JIZHI_HOME=/data

WORKDIR /src
# .dockerignore keeps the context to pyproject.toml, README.md and the packages (jizhi, stages,
# storage and, once it exists, allocator). confluent-kafka and aerospike ship manylinux wheels.
COPY . .
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 1000 jizhi && mkdir -p /data && chown jizhi /data
USER jizhi
WORKDIR /home/jizhi
VOLUME ["/data"]
EXPOSE 9464
ENTRYPOINT ["jizhi"]
CMD ["--help"]
