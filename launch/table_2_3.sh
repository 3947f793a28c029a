#!/usr/bin/env bash
# Seeds Table 2.3: VOC07 detection AP per class, pretrained / FT / FC-FT nets.
# Usage: bash launch/table_2_3.sh WORKDIR [config args of configs/study.py]
#   bash launch/table_2_3.sh workdirs/study                      # demo (runlocal)
#   bash launch/table_2_3.sh ~/runs/study devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet
# Runs what configs/study.py needs for it (nets, features: cached in WORKDIR)
# and writes WORKDIR/report/index.md.
source "$(dirname "$0")/_env.sh"
run_study table2.3 "$@"
