#!/usr/bin/env bash
# Seeds Table 4.1: PASCAL-CLS mAP per layer over the pretraining snapshots.
# Usage: bash launch/table_4_1.sh WORKDIR [config args of configs/study.py]
#   bash launch/table_4_1.sh workdirs/study                      # demo (runlocal)
#   bash launch/table_4_1.sh ~/runs/study devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet
# Runs what configs/study.py needs for it (nets, features: cached in WORKDIR)
# and writes WORKDIR/report/index.md.
source "$(dirname "$0")/_env.sh"
run_study table4.1 "$@"
