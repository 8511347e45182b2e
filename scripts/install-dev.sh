#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine: Python packages, the reference model,
# Fashion-MNIST and Chromium (both from Debian), with no downloads at test time.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || [ ! -x /usr/bin/chromium ]; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q dataset-fashion-mnist chromium
fi
python -m pip install -q -r requirements.txt -r requirements-dev.txt
python -m pip install -q --no-deps --no-build-isolation -e .  # the rvt-lens command, and the packages importable anywhere
python -m pip install -q --no-deps vit-pytorch==1.26.11
