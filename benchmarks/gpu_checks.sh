#!/usr/bin/env bash
# Issue 14's GPU figures in one command, for a lent GPU machine (about 8 minutes on an H200):
# the WLASL100-shaped whole run with process and thread loader workers on one dataset, then the
# per-backbone training rates. Logs and JSON go to $OUT (the device tool's folder), else /tmp/gpu-checks.
#
# Prepare once, here (both folders are git-ignored and travel with `carry`):
#   mkdir -p .bench && cp ../shared/reference/wlasl/nslt_100.json .bench/
#   .whl/: the wheels the device image lacks, for its Python 3.12: webdataset, braceexpand, ffmpeg-python,
#   future, simplejpeg, imageio-ffmpeg==0.5.1 (27 MB; 0.8's 68 MB is over the 64 MiB a call carries; its
#   ffmpeg 4.2.2 ran `bench_gpu.py --quick`'s synth and build here, via WLASL_SHARDS_FFMPEG), e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform any -d .whl NAME
# Then: device run(command="bash benchmarks/gpu_checks.sh", carry=[".whl", ".bench"], timeout_s=600).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "gpu_checks: installing .whl/*.whl failed (prepared? see the top of this file)"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "import torch, torchvision, transformers; print(torch.__version__, torchvision.__version__, transformers.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
timeout 380 python3 benchmarks/bench_gpu.py --whole-run --epochs 2 --worker-mode both --nslt .bench/nslt_100.json \
  --build-workers "$(nproc)" --out "$OUT/whole_run.json" 2>&1 | tee "$OUT/whole_run.log"
timeout 150 python3 benchmarks/bench_models.py --archs i3d,r2plus1d_18,s3d,mvit_v2_s,swin3d_t,videomae-base \
  --repeats 2 2>&1 | tee "$OUT/models.log"
