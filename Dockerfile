# syntax=docker/dockerfile:1.7
# r1ft: the fine-tuning job as an image. Runs `python -m r1ft run` (Vast.ai "args" launch mode keeps this
# ENTRYPOINT); settings come from R1FT_* environment variables. Build: docker build -t IMAGE .
#
# Why an nvidia/cuda *base* image, not -runtime or -devel: torch's cu128 wheels bring the whole CUDA user
# space as nvidia-* wheels (cuBLAS, cuDNN, NCCL, nvrtc, ...), so the -runtime image's copy would only add
# ~3 GB. What the base image adds is what wheels can't: NVIDIA_REQUIRE_CUDA=cuda>=12.8, with which the
# NVIDIA container runtime refuses a host whose driver can't run CUDA 12.8 (before any download or GPU
# minute), and NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES, which get the driver mounted in.
#
# Why the final stage keeps a C compiler (gcc + libc headers, no g++): Triton compiles a small C launcher
# for every kernel at run time, and flex_attention (the default attention on GPU) and Liger kernels run
# through Triton. Measured on an H200 (torch 2.11, triton 3.6): with no cc on PATH both fail with
# "Failed to find C compiler". Only build tools beyond that (uv, build backends) stay in the builder.
#
# libgomp1 is named although gcc brings it: the llama.cpp inside the xllamacpp wheel, which checks every
# GGUF file before it is published, links libgomp.so.1 (torch carries its own, renamed copy).
#
# Pinned: base image tag (add @sha256 via --build-arg CUDA_IMAGE=...@sha256:... to freeze it), uv, Python
# (a python-build-standalone build that uv verifies against its own checksums), torch's version and CUDA
# build, everything else by requirements.lock with hashes. Ubuntu packages follow the pinned base release.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---- builder: Python, torch, the locked dependencies (layers that change rarely come first) ----------
FROM ${CUDA_IMAGE} AS builder
ARG PYTHON_VERSION=3.11.18
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv

# torch's CUDA 12.8 build of pyproject.toml's version, with the nvidia-* and triton versions it pins.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python \
        --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}+${TORCH_CUDA}"

# Everything else exactly as locked (hashes checked). torch's loosely pinned dependencies (sympy,
# networkx, ...) are replaced by the locked versions here; `uv pip check` proves the set is consistent.
COPY requirements.lock /tmp/requirements.lock
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python --require-hashes --no-deps -r /tmp/requirements.lock \
    && uv pip check --python /opt/venv/bin/python

# ---- app: the r1ft package alone, staged so that a code edit rebuilds one small layer ----------------
FROM builder AS app
COPY pyproject.toml /src/pyproject.toml
COPY r1ft /src/r1ft
RUN uv pip install --python /opt/venv/bin/python --no-deps --no-build-isolation /src \
    && site=/opt/venv/lib/python3.11/site-packages \
    && mkdir -p "/staging${site}" /staging/opt/venv/bin \
    && cp -a "${site}/r1ft" "${site}"/r1ft-*.dist-info "/staging${site}/" \
    && cp -a /opt/venv/bin/r1ft /staging/opt/venv/bin/

# ---- final: CUDA base + init + compiler for Triton + Python + venv + app ------------------------------
FROM ${CUDA_IMAGE} AS final
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini gcc libc6-dev libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
COPY --from=app /staging/ /
COPY --chmod=755 entrypoint /app/entrypoint

# Everything the job writes lives under /workspace, the one directory its disk watchdog measures: run
# directories, the Hub and datasets caches, the Triton/Inductor kernel caches (kept across restarts of an
# interruptible instance, so a resumed run skips recompiling) and matplotlib's font cache (else in $HOME).
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    R1FT_WORK_DIR=/workspace \
    HF_HOME=/workspace/hf_cache \
    HF_HUB_CACHE=/workspace/hf_cache/hub \
    HF_DATASETS_CACHE=/workspace/hf_cache/datasets \
    HF_XET_HIGH_PERFORMANCE=1 \
    TRITON_CACHE_DIR=/workspace/cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/workspace/cache/inductor \
    MPLCONFIGDIR=/workspace/cache/matplotlib
# Any user may run the job (`docker run --user UID:GID`): /workspace is a directory of theirs mounted over
# this one, or this one, writable by all like /tmp. Made here, not by WORKDIR: buildah's WORKDIR leaves it
# to the engine, which makes it root's at run time.
RUN mkdir -m 1777 /workspace
WORKDIR /workspace

# tini as PID 1 forwards SIGTERM (docker stop, Vast) to the job and reaps zombies; the entrypoint execs
# Python, so the signal reaches the job's handler, which saves a checkpoint and exits 143.
ENTRYPOINT ["/usr/bin/tini", "--", "/app/entrypoint"]
