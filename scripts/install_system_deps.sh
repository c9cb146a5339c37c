#!/usr/bin/env bash
# Debian packages the project needs: Fashion-MNIST (real images for the CNN experiments).
set -euo pipefail
if [ -d /usr/share/datasets/fashion-mnist ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq dataset-fashion-mnist
