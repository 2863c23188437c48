# duplex server image. CPU by default; for CUDA pass a CUDA wheel index for torch:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t duplex:cuda .
#   docker run --gpus all -e DUPLEX_DEVICE=cuda -p 8000:8000 duplex:cuda
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libopus0 && rm -rf /var/lib/apt/lists/*
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md LICENSE ./
COPY server server
COPY model model
COPY streaming streaming
COPY clients clients
COPY models/default models/default
# The serving install: not the `tools` extra (silero-vad, matplotlib) of the measurement tools.
RUN pip install .

RUN useradd --system --uid 10001 duplex
USER duplex
ENV DUPLEX_HOST=0.0.0.0 DUPLEX_MODEL=/app/models/default
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["duplex", "serve"]
