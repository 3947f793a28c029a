#!/usr/bin/env bash
# The whole study: every seed table and figure, then WORKDIR/report/index.md.
# Usage: bash launch/study.sh WORKDIR [config args of configs/study.py]
#   bash launch/study.sh workdirs/study                     # demo (runlocal)
#   bash launch/study.sh ~/runs/study devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet,sun397_dir=~/tensorflow_datasets
# Interrupted? Run the same command again: only unfinished steps run.
source "$(dirname "$0")/_env.sh"
run_study '' "$@"
