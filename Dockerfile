# mrctprep as a Docker image:
#   docker build -t mrctprep .
#   docker run --rm -v /data/bids:/data:ro -v /data/out:/out mrctprep /data /out participant
FROM python:3.11-slim-bookworm

COPY . /tmp/mrctprep-src
RUN sh /tmp/mrctprep-src/container/install.sh /tmp/mrctprep-src && rm -rf /tmp/mrctprep-src

# Run as a non-root user with a writable HOME (HD-BET and matplotlib write caches there).
RUN useradd --create-home --home-dir /home/mrctprep --uid 1000 mrctprep
ENV HOME=/home/mrctprep \
    MPLCONFIGDIR=/tmp/matplotlib \
    NIPYPE_NO_ET=1 \
    MRCTPREP_CONTAINER_TYPE=docker \
    MRCTPREP_CONTAINER_TAG=mrctprep:latest
USER mrctprep
WORKDIR /tmp

ENTRYPOINT ["mrctprep"]
CMD ["--help"]
