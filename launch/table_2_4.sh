#!/usr/bin/env bash
# Seeds Table 2.4: VOC07 GT-box classification mAP per layer and net.
# Usage: bash launch/table_2_4.sh WORKDIR [config args of configs/study.py]
#   bash launch/table_2_4.sh workdirs/study                      # demo (runlocal)
#   bash launch/table_2_4.sh ~/runs/study devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet
# Runs what configs/study.py needs for it (nets, features: cached in WORKDIR)
# and writes WORKDIR/report/index.md.
source "$(dirname "$0")/_env.sh"
run_study table2.4 "$@"
