# syntax=docker/dockerfile:1
# hrnet-quanteval: two stacks from one code base.
#   legacy  - the zoo's published setup: CUDA 11.1, Python 3.8, torch 1.9.1+cu111, AIMET 1.22.2 (GPUs up to Ampere)
#   current - Hopper and newer: CUDA 12.8, Python 3.11, torch 2.x+cu128, aimet-torch 2.x
# Everything that affects numbers is pinned here (ARGs) or in requirements/{legacy,current}.txt.
#
# Base images are tags; pin them by digest for a byte-reproducible build, e.g.
#   docker buildx imagetools inspect nvidia/cuda:11.1.1-cudnn8-devel-ubuntu18.04
#   docker compose build --build-arg LEGACY_BASE=nvidia/cuda:11.1.1-cudnn8-devel-ubuntu18.04@sha256:<digest>
# NVIDIA withdraws old CUDA tags from time to time; if 11.1.1 is gone, AIMET's own 1.22.2 CI base
# nvidia/cuda:11.0.3-cudnn8-devel-ubuntu18.04 works too (see README, "Base images").
ARG LEGACY_BASE=nvidia/cuda:11.1.1-cudnn8-devel-ubuntu18.04
ARG CURRENT_BASE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
ARG HRNET_REPO=https://github.com/HRNet/HRNet-Human-Pose-Estimation.git
ARG HRNET_COMMIT=00d7bf72f56382165e504b10ff0dddb82dca6fd2
ARG AIMET_VERSION=1.22.2
ARG AIMET_RELEASE_URL=https://github.com/quic/aimet/releases/download/1.22.2
# AIMET 1.22.2's wheel versions ("torch-gpu-1.22.2") are rejected by pip >= 24.1
ARG LEGACY_PIP=23.0.1
ARG LEGACY_TORCH_VARIANT=cu111
ARG LEGACY_TORCH_INDEX=https://download.pytorch.org/whl/torch_stable.html
ARG CURRENT_TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG APP_GIT_COMMIT=unknown
ARG APP_UID=1000


# ---------------------------------------------------------------------------------------------------------
FROM ${LEGACY_BASE} AS legacy
ARG HRNET_REPO
ARG HRNET_COMMIT
ARG AIMET_VERSION
ARG AIMET_RELEASE_URL
ARG LEGACY_PIP
ARG LEGACY_TORCH_VARIANT
ARG LEGACY_TORCH_INDEX
ARG APP_GIT_COMMIT
ARG APP_UID
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# Python 3.8 (AIMET 1.22.2 wheels are cp38 only) and AIMET's Debian needs (reqs_deb_common.txt).
# hadolint ignore=DL3008 # Ubuntu 18.04 is frozen: its package versions no longer move
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.8 python3.8-dev python3.8-venv \
      liblapacke liblapacke-dev libjpeg8-dev zlib1g-dev \
      build-essential git patch wget ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /usr/lib/x86_64-linux-gnu/libjpeg.so /usr/lib/libjpeg.so

# A virtual environment instead of sudo pip and chmod 777 on dist-packages; `python` is 3.8 in it.
RUN python3.8 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir "pip==${LEGACY_PIP}"
ENV PATH=/opt/venv/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:${PATH}

# torch and torchvision as their CUDA 11.1 builds; the version numbers come from requirements/legacy.txt
COPY requirements/legacy.txt /opt/hrnet-quanteval/requirements/legacy.txt
RUN req=/opt/hrnet-quanteval/requirements/legacy.txt \
 && torch=$(sed -n 's/^torch==//p' "$req") && vision=$(sed -n 's/^torchvision==//p' "$req") \
 && pip install --no-cache-dir -f "${LEGACY_TORCH_INDEX}" \
      "torch==${torch}+${LEGACY_TORCH_VARIANT}" "torchvision==${vision}+${LEGACY_TORCH_VARIANT}" \
 && pip install --no-cache-dir -r "$req"

# AIMET 1.22.2 torch_gpu, in the documented order; legacy.txt constrains what its dependencies may change
RUN req=/opt/hrnet-quanteval/requirements/legacy.txt \
 && pip install --no-cache-dir -c "$req" "${AIMET_RELEASE_URL}/AimetCommon-torch_gpu_${AIMET_VERSION}-cp38-cp38-linux_x86_64.whl" \
 && pip install --no-cache-dir -c "$req" -f "${LEGACY_TORCH_INDEX}" "${AIMET_RELEASE_URL}/AimetTorch-torch_gpu_${AIMET_VERSION}-cp38-cp38-linux_x86_64.whl" \
 && pip install --no-cache-dir -c "$req" "${AIMET_RELEASE_URL}/Aimet-torch_gpu_${AIMET_VERSION}-cp38-cp38-linux_x86_64.whl"

# AIMET's envsetup.sh, as ENV instead of a sourced script, plus libpymo's folder
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.8/site-packages/aimet_common:/usr/local/nvidia/lib:/usr/local/nvidia/lib64:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib \
    CUDA_HOME=/usr/local/cuda \
    CUDA_TOOLKIT_PATH=/usr/local/cuda \
    CUDNN_INSTALL_PATH=/usr/local/cuda \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_VISIBLE_DEVICES=all

# HRNet at the pinned commit, patched, NMS built; any failure fails the build
COPY patches /opt/hrnet-quanteval/patches
COPY scripts /opt/hrnet-quanteval/scripts
RUN /opt/hrnet-quanteval/scripts/fetch-hrnet.sh "${HRNET_REPO}" "${HRNET_COMMIT}" /tmp/hrnet \
 && HRNET_COMMIT="${HRNET_COMMIT}" HRNET_REQUIRE_GPU_NMS=1 HRNET_NMS_REQUIRE_CUDA=1 PYTHON=python \
      /opt/hrnet-quanteval/scripts/prepare-hrnet-lib.sh /tmp/hrnet /opt/hrnet/lib \
 && rm -rf /tmp/hrnet

COPY app /opt/hrnet-quanteval/app
RUN pip install --no-cache-dir --no-deps /opt/hrnet-quanteval/app && python -m hrnet_quanteval --version
COPY entrypoint.sh /usr/local/bin/entrypoint.sh

RUN useradd --create-home --uid "${APP_UID}" evaluator \
 && mkdir -p /data/coco /cache /results \
 && chown evaluator:evaluator /cache /results
ENV HRNET_QUANTEVAL_STACK=legacy \
    HRNET_QUANTEVAL_GIT_COMMIT=${APP_GIT_COMMIT} \
    HRNET_LIB=/opt/hrnet/lib \
    HRNET_COMMIT=${HRNET_COMMIT} \
    HRNET_QUANTEVAL_DATASET=/data/coco \
    HRNET_QUANTEVAL_ARTIFACTS=/cache \
    HRNET_QUANTEVAL_RESULTS=/results
VOLUME ["/cache", "/results"]
USER ${APP_UID}
WORKDIR /home/evaluator
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["eval"]


# ---------------------------------------------------------------------------------------------------------
FROM ${CURRENT_BASE} AS current
ARG HRNET_REPO
ARG HRNET_COMMIT
ARG CURRENT_TORCH_INDEX
ARG APP_GIT_COMMIT
ARG APP_UID
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# Python 3.11 from the deadsnakes archive (Ubuntu 22.04 ships 3.10)
# hadolint ignore=DL3008 # packages follow the base image's Ubuntu release and the deadsnakes archive
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-dev python3.11-venv build-essential git patch ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/cuda/bin:${PATH}

COPY requirements/current.txt /opt/hrnet-quanteval/requirements/current.txt
RUN req=/opt/hrnet-quanteval/requirements/current.txt \
 && torch=$(sed -n 's/^torch==//p' "$req") && vision=$(sed -n 's/^torchvision==//p' "$req") \
 && pip install --no-cache-dir --index-url "${CURRENT_TORCH_INDEX}" "torch==${torch}" "torchvision==${vision}" \
 && pip install --no-cache-dir -r "$req"

COPY patches /opt/hrnet-quanteval/patches
COPY scripts /opt/hrnet-quanteval/scripts
RUN /opt/hrnet-quanteval/scripts/fetch-hrnet.sh "${HRNET_REPO}" "${HRNET_COMMIT}" /tmp/hrnet \
 && HRNET_COMMIT="${HRNET_COMMIT}" HRNET_REQUIRE_GPU_NMS=1 HRNET_NMS_REQUIRE_CUDA=1 HRNET_NMS_NVCC_ARCH=compute_80 \
      PYTHON=python /opt/hrnet-quanteval/scripts/prepare-hrnet-lib.sh /tmp/hrnet /opt/hrnet/lib \
 && rm -rf /tmp/hrnet

COPY app /opt/hrnet-quanteval/app
RUN pip install --no-cache-dir --no-deps /opt/hrnet-quanteval/app && python -m hrnet_quanteval --version
COPY entrypoint.sh /usr/local/bin/entrypoint.sh

RUN useradd --create-home --uid "${APP_UID}" evaluator \
 && mkdir -p /data/coco /cache /results \
 && chown evaluator:evaluator /cache /results
ENV HRNET_QUANTEVAL_STACK=current \
    HRNET_QUANTEVAL_GIT_COMMIT=${APP_GIT_COMMIT} \
    HRNET_LIB=/opt/hrnet/lib \
    HRNET_COMMIT=${HRNET_COMMIT} \
    HRNET_QUANTEVAL_DATASET=/data/coco \
    HRNET_QUANTEVAL_ARTIFACTS=/cache \
    HRNET_QUANTEVAL_RESULTS=/results \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
VOLUME ["/cache", "/results"]
USER ${APP_UID}
WORKDIR /home/evaluator
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["eval"]
