#!/usr/bin/env bash
# The comparison in miniature (docs/world.md): zero-shot, full fine-tuning, LoRA, CoOp and Skip Tuning (with its
# ablations on combos) on world tasks, few-shot and base-to-new, 3 seeds each, with the learning rates LR chosen on
# held-out training images (benchmarks/sweep.py lr ... --eval-on held-out).
#
#   bash benchmarks/world_compare.sh LR OUT [TASK ...]     e.g. LR=1e-3,ft=1e-4 OUT=docs/benchmarks/world
#   METHODS=ft,skip bash benchmarks/world_compare.sh ...  # only these methods (no ablations)
set -euo pipefail
lr=$1
out=$2
shift 2
tasks=${*:-combos backgrounds outlines lighting sizes}
cd "$(dirname "$0")/.."
for task in $tasks; do
    methods=${METHODS:-ft,lora,coop,skip}
    if [ -z "${METHODS:-}" ] && [ "$task" = combos ]; then methods=$methods,deep,deep+lskip,deep+cskip; fi
    for protocol in few-shot base-to-new; do
        flag=()
        if [ "$protocol" = base-to-new ]; then flag=(--base-to-new); fi
        for seed in 0 1 2; do
            python benchmarks/compare.py --arch src/peft_skip/assets/world-clip --data "world:$task" --shots 16 \
                --epochs 5 --batch-size 8 --skip-layers 3 --test-images 2000 --threads 1 --clock cpu --lr "$lr" \
                --methods "$methods" "${flag[@]}" --seed "$seed" --out "$out/$task-$protocol/seed-$seed"
        done
        python benchmarks/seeds_table.py "$out/$task-$protocol"/seed-{0,1,2} --out "$out/$task-$protocol"
    done
done
python benchmarks/seeds_table.py --summary "$out"
