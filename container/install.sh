#!/bin/sh
# The install steps of the Docker and Singularity images (one script, so both stay the same).
# Usage: install.sh SOURCE_DIR   (run as root at image build time; the network is needed
# only here: nothing is downloaded when the container runs)
set -eu
source_dir="$1"

apt-get update
# graphviz draws --write-graph's SVG
apt-get install -y --no-install-recommends graphviz
rm -rf /var/lib/apt/lists/*

# torch first, pinned: the package's range would otherwise pick the newest release
pip install --no-cache-dir torch==2.13.0
# the combat extra (neuroHarmonize, numpy < 2) suits the image's Python 3.11
pip install --no-cache-dir "$source_dir[combat]"
mrctprep --version
