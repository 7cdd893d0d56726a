# One image for every process of the service; the container command picks which:
#   lora-service migrate | lora-service api | lora-service worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
# CPU wheels of PyTorch (the default index would pull ~3 GB of CUDA libraries; use a CUDA
# base image and drop the extra index to train on GPUs). Editable install: Alembic's
# migrations/ and alembic.ini are read from /app.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -e . \
 && useradd --create-home --uid 1000 app \
 && mkdir -p /data/artifacts /data/mnist \
 && chown -R app /data

USER app
ENV ARTIFACT_DIR=/data/artifacts \
    DATA_DIR=/data/mnist \
    HOST=0.0.0.0 \
    PORT=8000
EXPOSE 8000
# Liveness of the API (the default command). Worker containers override it with
# `lora-service worker-health` (docker-compose.yml does), readiness is /health/ready.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=3)"]
CMD ["lora-service", "api"]
