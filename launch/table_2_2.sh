#!/usr/bin/env bash
# Seeds Table 2.2: fc7 detection mAP and SUN-397 accuracy, pretrained / FT / FC-FT.
# Usage: bash launch/table_2_2.sh WORKDIR [config args of configs/study.py]
#   bash launch/table_2_2.sh workdirs/study                      # demo (runlocal)
#   bash launch/table_2_2.sh ~/runs/study devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet
# Runs what configs/study.py needs for it (nets, features: cached in WORKDIR)
# and writes WORKDIR/report/index.md.
source "$(dirname "$0")/_env.sh"
run_study table2.2 "$@"
