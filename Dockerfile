# syntax=docker/dockerfile:1
# hrnet-quanteval: two stacks from one code base.
#   legacy  - the zoo's published setup: CUDA 11.1, Python 3.8, torch 1.9.1+cu111, AIMET 1.22.2 (GPUs up to Ampere)
#   current - Hopper and newer: CUDA 12.8, Python 3.11, torch 2.x+cu128, aimet-torch 2.x
# Everything that affects numbers is pinned here (ARGs) or in requirements/{legacy,current}.txt.
#
# Each stack is built in a CUDA *devel* stage (<stack>-build: the virtual environment /opt/venv and HRNet's
# patched lib with NMS, /opt/hrnet, need nvcc and a compiler) and copied into a stage on the matching CUDA
# *runtime* image (the `legacy` and `current` targets): no compiler and no nvcc at run time.
# What changes per commit or per host (APP_GIT_COMMIT, APP_UID, the labels) is declared after the last layer
# that installs anything, so a new commit rebuilds only the app layer.
#
# Base images are tags; pin them by digest for a byte-reproducible build, e.g.
#   docker buildx imagetools inspect nvidia/cuda:11.1.1-cudnn8-runtime-ubuntu18.04
#   docker compose build --build-arg LEGACY_RUNTIME_BASE=nvidia/cuda:11.1.1-cudnn8-runtime-ubuntu18.04@sha256:<digest>
# NVIDIA withdraws old CUDA tags from time to time; if 11.1.1 is gone, AIMET's own 1.22.2 CI base
# nvidia/cuda:11.0.3-cudnn8-{devel,runtime}-ubuntu18.04 works too (see README, "Images: how they are built").
ARG LEGACY_BUILD_BASE=nvidia/cuda:11.1.1-cudnn8-devel-ubuntu18.04
ARG LEGACY_RUNTIME_BASE=nvidia/cuda:11.1.1-cudnn8-runtime-ubuntu18.04
ARG CURRENT_BUILD_BASE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
ARG CURRENT_RUNTIME_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
ARG HRNET_REPO=https://github.com/HRNet/HRNet-Human-Pose-Estimation.git
ARG HRNET_COMMIT=00d7bf72f56382165e504b10ff0dddb82dca6fd2
ARG AIMET_VERSION=1.22.2
ARG AIMET_RELEASE_URL=https://github.com/quic/aimet/releases/download/1.22.2
# AIMET 1.22.2's wheel versions ("torch-gpu-1.22.2") are rejected by pip >= 24.1
ARG LEGACY_PIP=23.0.1
ARG LEGACY_TORCH_VARIANT=cu111
ARG LEGACY_TORCH_INDEX=https://download.pytorch.org/whl/torch_stable.html
ARG CURRENT_TORCH_INDEX=https://download.pytorch.org/whl/cu128


# ---------------------------------------------------------------------------------------------------------
# The torch and torchvision pins alone. A COPY --from is cached by content, so the torch layer below is
# rebuilt when these two lines change, not whenever another pin in requirements/legacy.txt does.
FROM ${LEGACY_BUILD_BASE} AS legacy-torch-pins
COPY requirements/legacy.txt /legacy.txt
RUN grep -E '^torch(vision)?==' /legacy.txt >/torch.txt


# ---------------------------------------------------------------------------------------------------------
FROM ${LEGACY_BUILD_BASE} AS legacy-build
ARG HRNET_REPO
ARG HRNET_COMMIT
ARG AIMET_VERSION
ARG AIMET_RELEASE_URL
ARG LEGACY_PIP
ARG LEGACY_TORCH_VARIANT
ARG LEGACY_TORCH_INDEX
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# Python 3.8 (AIMET 1.22.2 wheels are cp38 only), AIMET's Debian needs (reqs_deb_common.txt) and the NMS
# build's compiler. NVIDIA's apt sources go first: nothing comes from them, and the Ubuntu 18.04 CUDA images
# fail `apt-get update` on their rotated signing keys (NO_PUBKEY).
# hadolint ignore=DL3008 # Ubuntu 18.04 is frozen: its package versions no longer move
RUN rm -f /etc/apt/sources.list.d/cuda*.list /etc/apt/sources.list.d/nvidia-ml*.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.8 python3.8-dev python3.8-venv \
      liblapacke liblapacke-dev libjpeg8-dev zlib1g-dev \
      build-essential git patch ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A virtual environment instead of sudo pip and chmod 777 on dist-packages; `python` is 3.8 in it.
# pip's cache is a BuildKit cache mount: kept between local builds, never in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3.8 -m venv /opt/venv && /opt/venv/bin/pip install "pip==${LEGACY_PIP}"
ENV PATH=/opt/venv/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:${PATH}

# torch and torchvision as their CUDA 11.1 builds, in a layer of their own (about 2 GB)
COPY --from=legacy-torch-pins /torch.txt /opt/hrnet-quanteval/requirements/legacy-torch.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pins=/opt/hrnet-quanteval/requirements/legacy-torch.txt \
 && torch=$(sed -n 's/^torch==//p' "$pins") && vision=$(sed -n 's/^torchvision==//p' "$pins") \
 && pip install -f "${LEGACY_TORCH_INDEX}" \
      "torch==${torch}+${LEGACY_TORCH_VARIANT}" "torchvision==${vision}+${LEGACY_TORCH_VARIANT}"

# every other pin (torch==X matches the X+cu111 build already installed)
COPY requirements/legacy.txt /opt/hrnet-quanteval/requirements/legacy.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /opt/hrnet-quanteval/requirements/legacy.txt

# AIMET 1.22.2 torch_gpu, in the documented order; legacy.txt constrains what its dependencies may change
RUN --mount=type=cache,target=/root/.cache/pip \
    req=/opt/hrnet-quanteval/requirements/legacy.txt \
 && pip install -c "$req" "${AIMET_RELEASE_URL}/AimetCommon-torch_gpu_${AIMET_VERSION}-cp38-cp38-linux_x86_64.whl" \
 && pip install -c "$req" -f "${LEGACY_TORCH_INDEX}" "${AIMET_RELEASE_URL}/AimetTorch-torch_gpu_${AIMET_VERSION}-cp38-cp38-linux_x86_64.whl" \
 && pip install -c "$req" "${AIMET_RELEASE_URL}/Aimet-torch_gpu_${AIMET_VERSION}-cp38-cp38-linux_x86_64.whl"

# HRNet at the pinned commit, patched, NMS built with nvcc; any failure fails the build
COPY patches /opt/hrnet-quanteval/patches
COPY scripts /opt/hrnet-quanteval/scripts
RUN /opt/hrnet-quanteval/scripts/fetch-hrnet.sh "${HRNET_REPO}" "${HRNET_COMMIT}" /tmp/hrnet \
 && HRNET_COMMIT="${HRNET_COMMIT}" HRNET_REQUIRE_GPU_NMS=1 HRNET_NMS_REQUIRE_CUDA=1 PYTHON=python \
      /opt/hrnet-quanteval/scripts/prepare-hrnet-lib.sh /tmp/hrnet /opt/hrnet/lib \
 && rm -rf /tmp/hrnet


# ---------------------------------------------------------------------------------------------------------
FROM ${LEGACY_RUNTIME_BASE} AS legacy
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# The interpreter the virtual environment was made with (its bin/python links to /usr/bin/python3.8) and
# AIMET's Debian list as the build stage has it (its -dev packages are headers and the libjpeg.so link that
# AIMET expects, no compiler); no python3.8-dev, no build-essential, nothing from NVIDIA's apt sources.
# hadolint ignore=DL3008 # Ubuntu 18.04 is frozen: its package versions no longer move
RUN rm -f /etc/apt/sources.list.d/cuda*.list /etc/apt/sources.list.d/nvidia-ml*.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.8 liblapacke liblapacke-dev libjpeg8-dev zlib1g-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /usr/lib/x86_64-linux-gnu/libjpeg.so /usr/lib/libjpeg.so

COPY --from=legacy-build /opt/venv /opt/venv
COPY --from=legacy-build /opt/hrnet /opt/hrnet

# AIMET's envsetup.sh, as ENV instead of a sourced script, plus libpymo's folder
ENV PATH=/opt/venv/bin:/usr/local/nvidia/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.8/site-packages/aimet_common:/usr/local/nvidia/lib:/usr/local/nvidia/lib64:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib \
    CUDA_HOME=/usr/local/cuda \
    CUDA_TOOLKIT_PATH=/usr/local/cuda \
    CUDNN_INSTALL_PATH=/usr/local/cuda \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_VISIBLE_DEVICES=all

# NMS must load here too, not only where it was built: gpu_nms links the CUDA runtime (libcudart), which
# the runtime image has; loading it needs no GPU
RUN PYTHONPATH=/opt/hrnet/lib python -c "import nms.cpu_nms, nms.gpu_nms"

COPY app /opt/hrnet-quanteval/app
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps /opt/hrnet-quanteval/app && python -m hrnet_quanteval --version
COPY entrypoint.sh /usr/local/bin/entrypoint.sh

# The default user. Compose runs as the host's user instead (user: HOST_UID:HOST_GID), so /cache and
# /results are open to any uid with the sticky bit, like /tmp; a new `artifacts` volume copies that mode.
ARG APP_UID=1000
RUN useradd --create-home --uid "${APP_UID}" evaluator \
 && mkdir -p /data/coco /cache /results \
 && chown evaluator:evaluator /cache /results \
 && chmod 1777 /cache /results

# Per commit: last, so that a new commit leaves every layer above cached
ARG APP_GIT_COMMIT=unknown
ARG APP_VERSION=0.1.0
ARG APP_SOURCE=unknown
ARG HRNET_COMMIT
ARG LEGACY_RUNTIME_BASE
ENV HRNET_QUANTEVAL_STACK=legacy \
    HRNET_QUANTEVAL_GIT_COMMIT=${APP_GIT_COMMIT} \
    HRNET_LIB=/opt/hrnet/lib \
    HRNET_COMMIT=${HRNET_COMMIT} \
    HRNET_QUANTEVAL_DATASET=/data/coco \
    HRNET_QUANTEVAL_ARTIFACTS=/cache \
    HRNET_QUANTEVAL_RESULTS=/results
LABEL org.opencontainers.image.title="hrnet-quanteval (legacy: CUDA 11.1, torch 1.9.1, AIMET 1.22.2)" \
      org.opencontainers.image.source="${APP_SOURCE}" \
      org.opencontainers.image.revision="${APP_GIT_COMMIT}" \
      org.opencontainers.image.version="${APP_VERSION}" \
      org.opencontainers.image.base.name="${LEGACY_RUNTIME_BASE}"
VOLUME ["/cache", "/results"]
USER ${APP_UID}
WORKDIR /home/evaluator
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["eval"]


# ---------------------------------------------------------------------------------------------------------
# The torch and torchvision pins alone (see legacy-torch-pins).
FROM ${CURRENT_BUILD_BASE} AS current-torch-pins
COPY requirements/current.txt /current.txt
RUN grep -E '^torch(vision)?==' /current.txt >/torch.txt


# ---------------------------------------------------------------------------------------------------------
FROM ${CURRENT_BUILD_BASE} AS current-build
ARG HRNET_REPO
ARG HRNET_COMMIT
ARG CURRENT_TORCH_INDEX
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# Python 3.11 from the deadsnakes archive (Ubuntu 22.04 ships 3.10) and the NMS build's compiler;
# nothing from NVIDIA's apt sources, so they go before `apt-get update`
# hadolint ignore=DL3008 # packages follow the base image's Ubuntu release and the deadsnakes archive
RUN rm -f /etc/apt/sources.list.d/cuda*.list /etc/apt/sources.list.d/nvidia-ml*.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-dev python3.11-venv build-essential git patch ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/cuda/bin:${PATH}

# torch and torchvision from the CUDA 12.8 index, in a layer of their own (several GB with the CUDA wheels)
COPY --from=current-torch-pins /torch.txt /opt/hrnet-quanteval/requirements/current-torch.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pins=/opt/hrnet-quanteval/requirements/current-torch.txt \
 && torch=$(sed -n 's/^torch==//p' "$pins") && vision=$(sed -n 's/^torchvision==//p' "$pins") \
 && pip install --index-url "${CURRENT_TORCH_INDEX}" "torch==${torch}" "torchvision==${vision}"

COPY requirements/current.txt /opt/hrnet-quanteval/requirements/current.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /opt/hrnet-quanteval/requirements/current.txt

COPY patches /opt/hrnet-quanteval/patches
COPY scripts /opt/hrnet-quanteval/scripts
RUN /opt/hrnet-quanteval/scripts/fetch-hrnet.sh "${HRNET_REPO}" "${HRNET_COMMIT}" /tmp/hrnet \
 && HRNET_COMMIT="${HRNET_COMMIT}" HRNET_REQUIRE_GPU_NMS=1 HRNET_NMS_REQUIRE_CUDA=1 HRNET_NMS_NVCC_ARCH=compute_80 \
      PYTHON=python /opt/hrnet-quanteval/scripts/prepare-hrnet-lib.sh /tmp/hrnet /opt/hrnet/lib \
 && rm -rf /tmp/hrnet


# ---------------------------------------------------------------------------------------------------------
FROM ${CURRENT_RUNTIME_BASE} AS current
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# The interpreter the virtual environment was made with (its bin/python links to /usr/bin/python3.11), from
# the same archive; the tools that add the archive are removed again. No compiler, no python3.11-dev.
# hadolint ignore=DL3008 # packages follow the base image's Ubuntu release and the deadsnakes archive
RUN rm -f /etc/apt/sources.list.d/cuda*.list /etc/apt/sources.list.d/nvidia-ml*.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 ca-certificates \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/*

COPY --from=current-build /opt/venv /opt/venv
COPY --from=current-build /opt/hrnet /opt/hrnet
ENV PATH=/opt/venv/bin:${PATH} \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# NMS must load here too (see the legacy stage)
RUN PYTHONPATH=/opt/hrnet/lib python -c "import nms.cpu_nms, nms.gpu_nms"

COPY app /opt/hrnet-quanteval/app
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps /opt/hrnet-quanteval/app && python -m hrnet_quanteval --version
COPY entrypoint.sh /usr/local/bin/entrypoint.sh

# The default user; compose runs as the host's user instead (see the legacy stage)
ARG APP_UID=1000
RUN useradd --create-home --uid "${APP_UID}" evaluator \
 && mkdir -p /data/coco /cache /results \
 && chown evaluator:evaluator /cache /results \
 && chmod 1777 /cache /results

# Per commit: last, so that a new commit leaves every layer above cached
ARG APP_GIT_COMMIT=unknown
ARG APP_VERSION=0.1.0
ARG APP_SOURCE=unknown
ARG HRNET_COMMIT
ARG CURRENT_RUNTIME_BASE
ENV HRNET_QUANTEVAL_STACK=current \
    HRNET_QUANTEVAL_GIT_COMMIT=${APP_GIT_COMMIT} \
    HRNET_LIB=/opt/hrnet/lib \
    HRNET_COMMIT=${HRNET_COMMIT} \
    HRNET_QUANTEVAL_DATASET=/data/coco \
    HRNET_QUANTEVAL_ARTIFACTS=/cache \
    HRNET_QUANTEVAL_RESULTS=/results
LABEL org.opencontainers.image.title="hrnet-quanteval (current: CUDA 12.8, torch 2.x, aimet-torch 2.x)" \
      org.opencontainers.image.source="${APP_SOURCE}" \
      org.opencontainers.image.revision="${APP_GIT_COMMIT}" \
      org.opencontainers.image.version="${APP_VERSION}" \
      org.opencontainers.image.base.name="${CURRENT_RUNTIME_BASE}"
VOLUME ["/cache", "/results"]
USER ${APP_UID}
WORKDIR /home/evaluator
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["eval"]
