# The app image: Flower's SuperExec plus clipfed and its dependencies. With process isolation a
# SuperExec container runs the ServerApp (beside the SuperLink) or a node's ClientApps (beside
# each SuperNode), so this is the only image that needs torch and clipfed.
#
# Build arguments (docker-compose.yml passes them from the variables in brackets):
#   SUPEREXEC_IMAGE  the base image [FLWR_SUPEREXEC_IMAGE]; default the official flwr/superexec.
#                    docker/build-offline.sh builds a local stand-in where Docker Hub is unreachable.
#   TORCH_INDEX_URL  where torch and torchvision come from [CLIPFED_TORCH_INDEX_URL]: PyTorch's CPU
#                    wheels by default; https://pypi.org/simple for the CUDA build (GPU hosts).
#   WHEELHOUSE_URL   offline builds: a folder of wheels (a find-links URL, e.g. one served on the
#                    build host's loopback with `docker build --network host`); when set, pip uses
#                    it alone and no index.
ARG SUPEREXEC_IMAGE=flwr/superexec:1.41.0
FROM ${SUPEREXEC_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELHOUSE_URL=

WORKDIR /app
RUN if [ -n "$WHEELHOUSE_URL" ]; then set -- --no-index --find-links "$WHEELHOUSE_URL"; \
    else set -- --index-url "$TORCH_INDEX_URL"; fi; \
    python -m pip install --no-cache-dir "$@" torch==2.14.1 torchvision==0.29.1
# The dependencies first, from pyproject.toml alone (an empty package and README stand in for
# clipfed's), so that editing clipfed's code rebuilds only the small layer after them.
COPY pyproject.toml ./
RUN if [ -n "$WHEELHOUSE_URL" ]; then set -- --no-index --find-links "$WHEELHOUSE_URL"; fi; \
    stub=$(mktemp -d) && cp pyproject.toml "$stub" && touch "$stub/README.md" \
    && mkdir "$stub/clipfed" && touch "$stub/clipfed/__init__.py" \
    && python -m pip install --no-cache-dir "$@" "$stub" && rm -r "$stub"
COPY README.md ./
COPY clipfed ./clipfed
RUN if [ -n "$WHEELHOUSE_URL" ]; then set -- --no-index --find-links "$WHEELHOUSE_URL"; fi; \
    python -m pip install --no-cache-dir --no-deps --force-reinstall "$@" . \
    && python -c "import clipfed.app.server_app, clipfed.app.client_app"

# Folders the app writes to, owned by the image's non-root user `app` and open to any user (the
# ServerApp's container may run as the host user that owns ./runs: CLIPFED_UID). A named volume
# mounted here starts with these owners and modes.
USER root
RUN mkdir -p /cache /runs && chown app:app /cache /runs && chmod 1777 /cache /runs
USER app

# HOME=/tmp: Flower installs each run's app bundle under $HOME/.flwr, which must be writable by
# whichever user the container runs as.
ENV CLIPFED_DATA_DIR=/data \
    CLIPFED_CACHE_DIR=/cache \
    HOME=/tmp \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
ENTRYPOINT ["flower-superexec"]
