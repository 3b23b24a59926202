#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a lent GPU machine (CI has none): the CUDA-only tests
# (fp16 GradScaler), every detector fixture and twin and the zoo run on cuda
# (NANDOCTOR_TEST_DEVICE=cuda), the whole-diagnose benchmark and the LR sweep benchmark on cuda. Each step has its own
# time limit so that one slow step leaves the others their time; logs go to OUTDIR.
#
#   bash scripts/gpu_check.sh OUTDIR [pytest -n WORKERS]
set -u
out=${1:-/tmp/gpu_check}
workers=${2:-8}
mkdir -p "$out"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...: run it, log it, say how it ended
    local name=$1 limit=$2; shift 2
    local began=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "$name: rc=$? in $((SECONDS - began)) s; $(tail -n 1 "$out/$name.log")"
}
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
step cuda_tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_dynamics.py -k fp16 -rs
NANDOCTOR_TEST_DEVICE=cuda step cases_on_cuda 200 python3 -m pytest -q -p no:cacheprovider -n "$workers" \
    tests/test_findings_by_case.py tests/test_dynamics.py
NANDOCTOR_TEST_DEVICE=cuda step zoo_on_cuda 150 python3 -m pytest -q -p no:cacheprovider -n "$workers" tests/test_zoo.py
(cd scripts && step bench_diagnose_cuda 120 python3 bench_diagnose.py --cuda 1)
# the sweep against the same optimizer steps done plainly, rates one at a time and stacked (issue 21)
(cd scripts && step bench_lr_sweep_cuda 150 python3 bench_lr_sweep.py --cuda 1)
grep -E "nandoctor sweep|stacked / sequential|sweep_stacked=" "$out/bench_lr_sweep_cuda.log"
grep -h -E "^(FAILED|ERROR)|passed|failed" "$out"/*.log | head -40
