#!/usr/bin/env bash
# Seeds Table 4.2: detection AP of the 50-50 net vs FT (demo: add det_grid=full).
# Usage: bash launch/table_4_2.sh WORKDIR [config args of configs/study.py]
#   bash launch/table_4_2.sh workdirs/study                      # demo (runlocal)
#   bash launch/table_4_2.sh ~/runs/study devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet
# Runs what configs/study.py needs for it (nets, features: cached in WORKDIR)
# and writes WORKDIR/report/index.md.
source "$(dirname "$0")/_env.sh"
run_study table4.2 "$@"
