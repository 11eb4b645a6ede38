#!/usr/bin/env bash
# The GPU checks of one machine in one run, what issue 17's open bars need first: a small project
# (benchmarks/gpu_project.py), the finetune step against the train step (finetune.cuda_graph
# both ways), the CUDA graphs' tests, inference (infer.cuda_graph both ways), the EPro-PnP layer
# (bench_finetune and bench_layer compile the whole layer: about 2 minutes cold on an H200, the
# later ones reuse inductor's disk cache), the coarse_predict stage, the other CUDA tests, then
# the train step against its best bare reference, coarse_predict's batch loop after a warm-up
# batch, crop, coarse_train (the OpenCV path with its augmentation in the workers and on the GPU,
# a worker's item, the compiled step at the profile's batch and at 128), the finetune step's
# profile (sync debug mode and torch.profiler tables), the batched PnP solver and, with several
# GPUs, a waiting process's CPU at the barriers (bench_wait). Steps that do
# not fit BUDGET are skipped, and the project's if it failed.
# On an H200 with 16 cores: project 42-55 s, bench_finetune over 150 s with a cold cache (117 s
# warm; before it timed the graphed step too), bench_infer 27-30 s (before it timed the graphed
# pass too), coarse_predict 22 s, the CUDA tests 150-250 s. Figures:
# docs/benchmarks.md, "One GPU".
#
#   bash benchmarks/gpu_check.sh [LOG]      env: BUDGET (s, default 540: 15 minutes of GPU time
#                                                less the machine's start), ROWS (2048), PROFILE (gpu),
#                                                SKIP (step names to leave out, e.g. "bench_crop bench_finetune"),
#                                                CUDA_TESTS (the test files of tests_cuda),
#                                                COMPILED_DECODE (the view path of bench_coarse_compiled:
#                                                opencv, or torch),
#                                                COARSE_SET, FINETUNE_SET (--set overrides of the coarse_train
#                                                epoch and of bench_finetune, e.g. "coarse_train.decode=torch")
#
# Each step runs under the smaller of its cap and the time left; the log gets every output.
set -u
repo=$(pwd); log=${1:-gpu_check.log}; log=$(realpath -m "$log")
budget=${BUDGET:-540}; t0=$(date +%s); work=$(mktemp -d); rows=${ROWS:-2048}; profile=${PROFILE:-gpu}
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
step() {
  local name=$1 cap=$2; shift 2
  case " ${SKIP:-} " in *" $name "*) echo "== $name: left out (SKIP)" | tee -a "$log"; return;; esac
  local left=$(( budget - ($(date +%s) - t0) - 5 ))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -le 10 ]; then echo "== $name: skipped (no time left)" | tee -a "$log"; return; fi
  echo "== $name (cap $cap s): $*" | tee -a "$log"
  local s=$(date +%s)
  timeout "$cap" "$@" >> "$log" 2>&1
  echo "== $name: rc $? in $(( $(date +%s) - s )) s (at $(( $(date +%s) - t0 )) s)" | tee -a "$log"
}
in_project() {                          # a step in the small project: skipped if it was not built
  if [ -d "$work/project/artifacts" ]; then (cd "$work/project" && step "$@"); else echo "== $1: skipped (no project)" | tee -a "$log"; fi
}
cuda_tests=${CUDA_TESTS:-tests/unit/test_pnp_epro.py tests/unit/test_train_cuda.py tests/stages/test_crop.py \
  tests/unit/test_warp_torch.py tests/stages/test_infer.py::test_batches_handed_on_one_behind_are_the_rows_of_one_big_batch \
  tests/unit/test_coarse_stream.py tests/stages/test_coarse.py \
  tests/unit/test_ddp.py::test_the_coarse_detectors_collectives_run_on_an_nccl_group_on_cuda}
graph_tests="tests/unit/test_cuda_graph.py \
  tests/stages/test_infer.py::test_cuda_graph_replays_of_the_network_pass_give_every_batch_its_own_outputs"
step project 120 python -m benchmarks.gpu_project "$work" --rows "$rows" --profile "$profile"
in_project bench_finetune 240 python -m benchmarks.bench_finetune --params params.yaml --steps 10 ${FINETUNE_SET:+--set $FINETUNE_SET}
step tests_cuda_graphs 150 python -m pytest -q -p no:cacheprovider $graph_tests
in_project bench_infer 90 python -m benchmarks.bench_infer --params params.yaml --pnp opencv --repeats 2 --phases
in_project bench_layer 200 python -m benchmarks.bench_layer --device cuda --batch 256 --points 1220 --samples 512 --passes 5 \
  --floor --kernels 25
in_project coarse_predict 60 python -m stages.coarse_predict --params params.yaml
grep -o '"[a-z]*_images_per_second": [0-9.]*' "$work/project/artifacts/coarse_predict/metrics.json" 2>/dev/null | tee -a "$log"
step tests_cuda 250 python -m pytest -q -p no:cacheprovider $cuda_tests -k "cuda or one_behind or torch_path"
in_project bench_train 100 python -m benchmarks.bench_train --params params.yaml --best-reference --set train.compile=true \
  --steps 10 --rounds 3
in_project bench_coarse_predict 45 python -m benchmarks.bench_coarse_predict --params params.yaml --split train --images 1024
in_project bench_crop 60 python -m benchmarks.bench_crop --params params.yaml --synth --keep "$work/bench_crop"
in_project bench_coarse_item 40 python -m benchmarks.bench_coarse item --params params.yaml --images 200 --rounds 3
for augment in opencv torch; do          # the OpenCV path, its photometric augmentation in the workers / on the GPU
  in_project "bench_coarse_augment_$augment" 100 python -m benchmarks.bench_coarse --params params.yaml --steps 12 --rounds 2 \
    --set coarse_train.decode=opencv coarse_train.augment=$augment coarse_train.compile=false
done
in_project bench_coarse_compiled 120 python -m benchmarks.bench_coarse --params params.yaml --steps 12 --rounds 2 \
  --set coarse_train.decode=${COMPILED_DECODE:-opencv} coarse_train.compile=true
in_project bench_coarse_b128 120 python -m benchmarks.bench_coarse --params params.yaml --steps 12 --rounds 2 \
  --set coarse_train.decode=${COMPILED_DECODE:-opencv} coarse_train.compile=true coarse_train.batch_size=128
in_project coarse_train_epoch 90 /usr/bin/time -v python -m benchmarks.bench_coarse stage --params params.yaml --images "$rows" \
  ${COARSE_SET:+--set $COARSE_SET}
in_project bench_finetune_profile 240 python -m benchmarks.bench_finetune --params params.yaml --steps 10 --profile \
  ${FINETUNE_SET:+--set $FINETUNE_SET}
in_project bench_infer_batched 60 python -m benchmarks.bench_infer --params params.yaml --pnp batched --repeats 2 --phases
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then   # several GPUs: nccl's barrier
  step bench_wait 60 python -m benchmarks.bench_wait --device cuda
fi
echo "== done at $(( $(date +%s) - t0 )) s; the project is in $work" | tee -a "$log"
tr '\r' '\n' < "$log" | grep -vE "%\||^\s*$" | grep -E "^==|ratio|img/s|images/s|images_per_second|passed|failed|Error|ResNet|medians|views:|training images|Maximum resident|phases|^  [_a-z]|host syncs|dispatches|bare cv2|decodes;|a pass|of a core" | cut -c1-220
