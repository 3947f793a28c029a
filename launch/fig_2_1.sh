#!/usr/bin/env bash
# Seeds fig 2-1: AuE distributions per layer, pretrained vs FT.
# Usage: bash launch/fig_2_1.sh WORKDIR [config args of configs/study.py]
#   bash launch/fig_2_1.sh workdirs/study                      # demo (runlocal)
#   bash launch/fig_2_1.sh ~/runs/study devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet
# Runs what configs/study.py needs for it (nets, features: cached in WORKDIR)
# and writes WORKDIR/report/index.md.
source "$(dirname "$0")/_env.sh"
run_study fig2-1 "$@"
