#!/usr/bin/env bash
# Beyond the seeds: linear CKA per layer, finetuned vs pretrained and across snapshots.
# Usage: bash launch/cka.sh WORKDIR [config args of configs/study.py]
#   bash launch/cka.sh workdirs/study                      # demo (runlocal)
#   bash launch/cka.sh ~/runs/study devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet
# Runs what configs/study.py needs for it (nets, features: cached in WORKDIR)
# and writes WORKDIR/report/index.md.
source "$(dirname "$0")/_env.sh"
run_study cka "$@"
