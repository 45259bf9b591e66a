#!/usr/bin/env bash
# Usage: [NNODES=1 NODE_RANK=0 PORT=29500 MASTER_ADDR=127.0.0.1] \
#     bash tools/dist_train.sh CONFIG GPUS [train.py args]
# GPUS is the number of processes on this node (CPU processes, gloo
# backend, on a machine without CUDA).
if [ $# -lt 2 ] || ! [[ "${2}" =~ ^([1-9][0-9]*|auto|cpu|gpu|xpu)$ ]]; then
    echo "usage: bash tools/dist_train.sh CONFIG GPUS [train.py args]; GPUS is the number of" \
        "processes on this node: a positive integer, or auto, cpu, gpu (got '${2:-}')" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
${PYTHON:-python} -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")"/train.py \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
