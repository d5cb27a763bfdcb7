# The app image: Flower's SuperExec plus clipfed and its dependencies. With process isolation a
# SuperExec container runs the ServerApp (beside the SuperLink) or a node's ClientApps (beside
# each SuperNode), so this is the only image that needs torch and clipfed.
FROM flwr/superexec:1.41.0

WORKDIR /app
# CPU wheels keep the image small; drop the index URL for a CUDA build on GPU hosts.
RUN python -m pip install --no-cache-dir \
        --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY clipfed ./clipfed
RUN python -m pip install --no-cache-dir .

ENV CLIPFED_DATA_DIR=/data \
    CLIPFED_CACHE_DIR=/cache \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
ENTRYPOINT ["flower-superexec"]
