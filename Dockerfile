# wlasl-shards: build shards and train I3D in a container.
#   docker build -t wlasl-shards .
#   docker run --rm -v "$PWD/data:/data" wlasl-shards build /data/wlasl /data/shards --subset 100
#   docker run --rm -v "$PWD/demo:/data" wlasl-shards demo /data   # every step on synthetic data
# For GPU training start from a CUDA-enabled base or install the CUDA torch wheel instead.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/wlasl-shards
COPY pyproject.toml README.md ./
COPY wlasl_shards ./wlasl_shards
# CPU torch from its own index keeps the image small; the system ffmpeg above takes priority over imageio-ffmpeg's.
RUN pip install --no-cache-dir torch --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir .

WORKDIR /data
ENTRYPOINT ["wlasl-shards"]
CMD ["--help"]
