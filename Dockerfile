# mrctprep as a Docker image (docs/hpc.md):
#   docker build -t mrctprep:0.1.0 .                                  # CPU-only torch
#   docker build -t mrctprep:0.1.0-cuda --build-arg TORCH_BUILD=cuda .  # CUDA 13.0 torch
#   docker run --rm -u $(id -u):$(id -g) -v /data/bids:/data:ro -v /data/out:/out \
#       mrctprep:0.1.0 /data /out participant
FROM python:3.11-slim-bookworm

# cpu: CPU-only torch (smaller); cuda: PyPI's Linux torch, built with CUDA 13.0, which needs
# an NVIDIA driver >= 580 on the host
ARG TORCH_BUILD=cpu

LABEL org.opencontainers.image.title="mrctprep" \
      org.opencontainers.image.description="BIDS App for MR and CT images" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="https://github.com/mrctprep/mrctprep" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY . /tmp/mrctprep-src
RUN sh /tmp/mrctprep-src/container/install.sh /tmp/mrctprep-src "$TORCH_BUILD" && rm -rf /tmp/mrctprep-src

# A non-root user by default; HOME is writable by any user, so that `docker run -u UID:GID`
# (outputs owned by the caller) works too (HD-BET and matplotlib write caches there).
RUN useradd --create-home --home-dir /home/mrctprep --uid 1000 mrctprep \
    && chmod 1777 /home/mrctprep
# GeneratedBy.Container.Tag of the outputs is mrctprep:<version>, from the installed package.
ENV HOME=/home/mrctprep \
    MPLCONFIGDIR=/tmp/matplotlib \
    NIPYPE_NO_ET=1 \
    MRCTPREP_CONTAINER_TYPE=docker
USER mrctprep
WORKDIR /tmp

ENTRYPOINT ["mrctprep"]
CMD ["--help"]
