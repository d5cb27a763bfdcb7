# Stand-ins for flwr/superlink, flwr/supernode and flwr/superexec (1.41), for hosts that cannot
# pull from Docker Hub: Debian bookworm (Python 3.11) plus `pip install flwr==1.41.*` from a local
# wheelhouse, laid out like the official images where it matters here: a non-root user `app`
# (UID/GID 49999) whose home and working folder is /app, Flower in a venv at /python/venv on PATH,
# and each image's Flower executable as its entrypoint. Built by docker/build-offline.sh:
#
#   docker build --network host --build-arg WHEELHOUSE_URL=http://127.0.0.1:PORT/ \
#       --target superexec -t clipfed-standin/superexec:1.41.0 -f docker/flwr-standin.Dockerfile docker
#
# DEBIAN_IMAGE is a bookworm root file system imported with `docker import` (debootstrap).
ARG DEBIAN_IMAGE=clipfed-standin/debian:bookworm
FROM ${DEBIAN_IMAGE} AS base
ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1 PATH=/python/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN groupadd --gid 49999 app \
    && useradd --uid 49999 --gid 49999 --home-dir /app --no-create-home --shell /bin/sh app \
    && mkdir -p /app /python \
    && chown app:app /app /python
USER app
ENV HOME=/app
WORKDIR /app
# Only pip's own network access matters here: the wheelhouse on the build host's loopback.
ARG WHEELHOUSE_URL
ARG FLWR_VERSION=1.41.*
RUN python3 -m venv /python/venv \
    && python -m pip install --no-cache-dir --no-index --find-links "${WHEELHOUSE_URL}" \
        "flwr==${FLWR_VERSION}" \
    && flower-superlink --help > /dev/null

FROM base AS superlink
ENTRYPOINT ["flower-superlink"]

FROM base AS supernode
ENTRYPOINT ["flower-supernode"]

FROM base AS superexec
ENTRYPOINT ["flower-superexec"]
