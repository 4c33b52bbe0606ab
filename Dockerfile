# Chorus in a container, as `make serve` runs it: nginx on $PORT in front (buffering slow
# clients, deploy/serve.py), gunicorn serving app:create_app() behind it on a unix socket, with
# the committed model artifacts. docker-compose.yml runs the same image behind a separate nginx,
# with Postgres and Prometheus.
#
#   docker build -t chorus .
#   docker run -p 8000:8000 -e SECRET_KEY=<long random value> [-e ADMIN_PASSWORD=...] \
#       -v chorus-data:/app/instance chorus
#
# SECRET_KEY (at least 32 bytes) must be supplied at run time and is never baked into the image:
# without it the app refuses to start (generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'
# and give every container of one deployment the same value). ADMIN_PASSWORD is optional; without
# it the admin pages answer 403. The SQLite database lives in /app/instance: mount a volume there
# to keep it, or set DATABASE_URL to a postgresql+psycopg:// URL. Other settings: DESIGN.md
# "Configuration" and gunicorn.conf.py (WEB_CONCURRENCY, GUNICORN_THREADS, GUNICORN_TIMEOUT, ...).
# The sample gallery needs Fashion-MNIST: mount its IDX files and set FASHION_MNIST_DIR.
# `docker stop` waits 10 s by default; gunicorn's graceful stop may take GUNICORN_GRACEFUL_TIMEOUT.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Debian's nginx, run unprivileged by deploy/serve.py (its own config, pid and temp paths).
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system chorus \
    && useradd --system --gid chorus --create-home --home-dir /home/chorus chorus

WORKDIR /app

# Inside the image torch==2.14.1 and torchvision==0.29.1 (requirements.txt) come from PyPI, not
# from a local wheel folder as on the development machines. PyPI's Linux x86_64 torch wheel pulls
# the CUDA libraries (several GB); for a CPU-only image pass a CPU wheel index, whose "+cpu" builds
# satisfy the same pins: docker build --build-arg TORCH_EXTRA_INDEX_URL=<index URL> .
ARG TORCH_EXTRA_INDEX_URL=
COPY requirements.txt ./
RUN pip install ${TORCH_EXTRA_INDEX_URL:+--extra-index-url "$TORCH_EXTRA_INDEX_URL"} \
        -r requirements.txt

# Code and artifacts stay root-owned (read-only to the app); only instance/ is writable.
# models/ carries models/artifacts/<version>/ (weights and manifests, verified at load).
COPY app.py gunicorn.conf.py ./
COPY ensembles ./ensembles
COPY experiments ./experiments
COPY models ./models
COPY serving ./serving
COPY store ./store
COPY deploy ./deploy
COPY views ./views
COPY templates ./templates
COPY static ./static
RUN python -m compileall -q /app \
    && mkdir -p /app/instance \
    && chown chorus:chorus /app/instance

USER chorus

# nginx listens on every interface inside the container; one torch thread per gunicorn worker.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    FRONT_DIR=/tmp/chorus-front \
    NGINX_ERROR_LOG=stderr \
    TORCH_THREADS=1 \
    OMP_WAIT_POLICY=PASSIVE
EXPOSE 8000

# No curl in the slim image: Python's urllib raises (exit 1) on anything but a 2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/healthz', timeout=4)"]

CMD ["python", "-m", "deploy.serve"]
