#!/usr/bin/env bash
#SBATCH --job-name=cnnjax-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=3-00:00:00
# The study's training steps on several hosts: ImageNet pretraining (with
# snapshots), the VOC07 FT / FC-FT / 50-50 finetunings and the SUN-397 ones.
# One process per node drives that node's GPUs; `--distributed` calls
# jax.distributed.initialize(), which reads the coordinator address, the
# number of processes and this process's id from SLURM's environment. The
# workdir must be on a filesystem every node sees. Feature extraction and the
# SVM steps run in one process: finish the study on one node afterwards with
# launch/study.sh and the same WORKDIR and args (trained nets are reused).
#
# Usage: sbatch launch/slurm_multihost.sh WORKDIR CONFIG_ARGS
#   CONFIG_ARGS must include `pretrain` (train `pretrained` here), e.g.
#   pretrain,pretrained=/shared/runs/imagenet_caffenet,imagenet_dir=/shared/tfds,devkit_dir=/shared/VOCdevkit,sun397_dir=/shared/tfds
# PYTHON_BIN: a Python with cnnjax and jax[cuda] on every node.
set -euo pipefail
WORKDIR="${1:?usage: sbatch launch/slurm_multihost.sh WORKDIR CONFIG_ARGS}"
ARGS="${2:?usage: sbatch launch/slurm_multihost.sh WORKDIR CONFIG_ARGS}"
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
srun "${PYTHON_BIN:-python3}" -m cnnjax.main --distributed \
    --config "configs/study.py:${ARGS},only=pretrain+net+sun397" \
    --workdir "$WORKDIR"
