#!/usr/bin/env bash
# Seeds Table 5.2: detection AP with ablated pool5 features (FT net).
# Usage: bash launch/table_5_2.sh WORKDIR [config args of configs/study.py]
#   bash launch/table_5_2.sh workdirs/study                      # demo (runlocal)
#   bash launch/table_5_2.sh ~/runs/study devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet
# Runs what configs/study.py needs for it (nets, features: cached in WORKDIR)
# and writes WORKDIR/report/index.md.
source "$(dirname "$0")/_env.sh"
run_study table5.2 "$@"
