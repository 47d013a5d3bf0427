# syntax=docker/dockerfile:1.7
#
# data2vec-stack images (see deploy/README.md).
#
#   docker build -t d2v:serve .                 # default target `serve`: the torch-free gateway
#   docker build -t d2v:full --target full .    # + torch (CPU), train, export: can run `d2v quickstart`
#
# `serve` holds the HTTP gateway with ONNX Runtime + OpenVINO (CPU) and tritonclient (for
# `--engine triton`); it never installs torch, because the serving path never imports it (enforced by
# tests/test_import_boundaries.py). Models come from a mounted model store (VOLUME /data, store
# /data/models) or a derived image. `full` adds the `train` and `export` extras for an all-in-one image:
# `docker run -v d2v-data:/data -p 8080:8080 d2v:full` trains and exports the default tiny models on the
# first start (a few minutes), then serves them.
#
# Stop timeout: the server drains in-flight requests for D2V_GRACEFUL_TIMEOUT_S (30 s) after SIGTERM.
# A Dockerfile cannot set the stop timeout and docker's default is 10 s, so run with
# `docker run --stop-timeout 40` (compose: `stop_grace_period: 40s`); Kubernetes uses
# terminationGracePeriodSeconds (deploy/kubernetes).

ARG PYTHON_VERSION=3.11

# ------------------------------------------------------------------------------------------------- base
FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# A fixed non-root uid/gid, so Kubernetes' runAsUser / fsGroup (deploy/kubernetes) can match it.
RUN groupadd --system --gid 10001 d2v \
 && useradd --system --uid 10001 --gid d2v --home-dir /data --no-create-home --shell /usr/sbin/nologin d2v

# ---------------------------------------------------------------------------------- dependencies: serve
# Dependencies get their own layer, resolved from pyproject.toml alone, so code edits do not reinstall
# onnxruntime / OpenVINO. Every runtime package ships manylinux wheels that bundle their native libraries
# (libsndfile, TBB, ...), so neither stage needs a compiler or apt packages.
FROM base AS deps-serve
# `cpu` = onnxruntime + openvino; `triton` = tritonclient for `--engine triton`. Never add train/export
# here: they pull torch (use the `full` target). `gpu` (onnxruntime-gpu) replaces `cpu`, never both.
ARG EXTRAS=cpu,triton
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml /tmp/build/pyproject.toml
COPY deploy/docker/pyproject_deps.py /tmp/build/pyproject_deps.py
RUN python /tmp/build/pyproject_deps.py /tmp/build/pyproject.toml "${EXTRAS}" > /tmp/build/requirements.txt \
 && pip install --upgrade "pip>=24.2" "setuptools>=69" "wheel>=0.43" \
 && pip install -r /tmp/build/requirements.txt

# ---------------------------------------------------------------------------------- project: serve
FROM deps-serve AS build-serve
WORKDIR /src
COPY pyproject.toml README.md ./
COPY d2v/ d2v/
COPY core/ core/
COPY models/ models/
COPY training/ training/
COPY export/ export/
COPY runtime/ runtime/
COPY server/ server/
COPY clients/ clients/
COPY workflows/ workflows/
# A regular (non-editable) install: the image needs no source tree. --no-deps: everything is in already,
# and pip must not resolve anything new at this point.
RUN pip install --no-deps . \
 && d2v serve --help > /dev/null \
 && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

# ----------------------------------------------------------------------------------- dependencies: full
FROM base AS deps-full
ARG EXTRAS_FULL=cpu,train,export,triton
# Matches scripts/setup.sh. The CPU build of torch goes in FIRST, from PyTorch's CPU wheel index (the
# standard way on a machine that can reach it): installed from PyPI's default index, `torch` is the
# multi-GB CUDA build. The later `torch>=2.4,<2.15` requirement is then already satisfied and kept.
ARG TORCH_VERSION=2.13.*
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade "pip>=24.2" "setuptools>=69" "wheel>=0.43" \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml /tmp/build/pyproject.toml
COPY deploy/docker/pyproject_deps.py /tmp/build/pyproject_deps.py
RUN python /tmp/build/pyproject_deps.py /tmp/build/pyproject.toml "${EXTRAS_FULL}" > /tmp/build/requirements.txt \
 && pip install -r /tmp/build/requirements.txt

# ------------------------------------------------------------------------------------------------- full
FROM base AS full
ENV PATH=/opt/venv/bin:$PATH \
    D2V_HOME=/data \
    D2V_GRACEFUL_TIMEOUT_S=30
COPY --from=deps-full /opt/venv /opt/venv
WORKDIR /opt/d2v
# The source stays in the image: `d2v quickstart` trains on the bundled sample data, which d2v.core.paths finds
# beside the source checkout (repo_root()/data). Hence an *editable* install, at the path it runs from.
COPY pyproject.toml README.md ./
COPY d2v/ d2v/
COPY core/ core/
COPY models/ models/
COPY training/ training/
COPY export/ export/
COPY runtime/ runtime/
COPY server/ server/
COPY clients/ clients/
COPY workflows/ workflows/
COPY data/ data/
COPY deploy/docker/healthcheck.py /opt/d2v-healthcheck.py
RUN pip install --no-deps --no-build-isolation -e . \
 && d2v quickstart --help > /dev/null \
 && install -d -o d2v -g d2v -m 0750 /data /data/models
# The `d2v` user, numerically: Kubernetes can only verify runAsNonRoot for a numeric USER.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
# The first start with an empty /data builds the models before the server binds: a long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "/opt/d2v-healthcheck.py", "http://127.0.0.1:8080/livez"]
# 0.0.0.0: a published container port is unreachable on the container's loopback. The CLI default stays
# 127.0.0.1 on purpose (never exposed unless asked), so containers must ask.
CMD ["d2v", "serve", "--quickstart-if-empty", "--host", "0.0.0.0", "--port", "8080"]

# ------------------------------------------------------------------------------------------------ serve
# Last stage = the default target of `docker build .`.
FROM base AS serve
ENV PATH=/opt/venv/bin:$PATH \
    D2V_HOME=/data \
    D2V_GRACEFUL_TIMEOUT_S=30
COPY --from=build-serve /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/d2v-healthcheck.py
# The store ($D2V_HOME/models) must be writable by the user for `d2v serve --model <HF model>` caches;
# a named volume mounted here inherits this ownership on first use.
RUN install -d -o d2v -g d2v -m 0750 /data /data/models
WORKDIR /data
# The `d2v` user, numerically: Kubernetes can only verify runAsNonRoot for a numeric USER.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
# python, not curl: the slim image has no curl. /livez answers as soon as the server is up; readiness
# (/readyz: models warm, engine healthy) is for load balancers, not for restarting the container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/d2v-healthcheck.py", "http://127.0.0.1:8080/livez"]
# 0.0.0.0: a published container port is unreachable on the container's loopback. The CLI default stays
# 127.0.0.1 on purpose (never exposed unless asked), so containers must ask.
CMD ["d2v", "serve", "--host", "0.0.0.0", "--port", "8080"]
