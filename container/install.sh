#!/bin/sh
# The install steps of the Docker image (singularity.def is made from that image).
# Usage: install.sh SOURCE_DIR [cpu|cuda]   (run as root at image build time; the network is
# needed only here: nothing is downloaded when the container runs)
set -eu
source_dir="$1"
torch_build="${2:-cpu}"
case "$torch_build" in
    cpu | cuda) ;;
    *) echo "install.sh: the torch build is cpu or cuda, not $torch_build" >&2; exit 2 ;;
esac

apt-get update
# graphviz draws --write-graph's SVG
apt-get install -y --no-install-recommends graphviz
rm -rf /var/lib/apt/lists/*

# torch first, pinned: the package's range would otherwise pick the newest release
case "$torch_build" in
    cpu) pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 ;;
    cuda) pip install --no-cache-dir torch==2.13.0 ;;  # CUDA 13.0: NVIDIA driver >= 580
esac
# the combat extra (neuroHarmonize, numpy < 2) suits the image's Python 3.11
pip install --no-cache-dir "$source_dir[combat]"
mrctprep --version
