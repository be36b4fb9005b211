"""Few-shot Skip Tuning through the Python API, on a tiny offline CLIP with random weights (runs in seconds).

    python examples/few_shot.py

With a real checkpoint, replace the model directory by e.g. "openai/clip-vit-base-patch16" and drop the
`make_offline_model` call. Several processes:
    accelerate launch --config_file examples/accelerate_config.yaml -m peft_skip.commands.cli train \
        --model ./clip-tiny --data digits --shots 4 --skip-layers 2 --epochs 2 --out runs/digits-2proc
"""

import tempfile

from peft import get_peft_model
from transformers import AutoModel, AutoProcessor

from peft_skip import SkipConfig, SkipTrainer, SkipTrainingArguments, evaluate_accuracy, tokenize_classes
from peft_skip.data import ImageTransform, load_dataset_spec, sample_few_shot
from peft_skip.offline import make_offline_model

work = tempfile.mkdtemp()
model_dir = make_offline_model(f"{work}/clip-tiny", arch="tiny")  # random weights: accuracy means nothing
model = AutoModel.from_pretrained(model_dir)
processor = AutoProcessor.from_pretrained(model_dir)

train_set = sample_few_shot(load_dataset_spec("digits", "train"), shots=4, seed=0)
test_set = load_dataset_spec("digits", "test")
prompts = tokenize_classes(model, processor.tokenizer, train_set.class_names, "digits")  # padded as the family needs
eval_transform = ImageTransform.from_processor(processor, train=False)

model = get_peft_model(model, SkipConfig(skip_layers=2, class_ratio=0.5))
with model.disable_adapter():
    zero_shot = evaluate_accuracy(model, test_set, prompts, eval_transform)

args = SkipTrainingArguments(output_dir=f"{work}/run", protocol="few_shot", num_train_epochs=2, learning_rate=1e-3)
result = SkipTrainer(model, args, train_set, prompts, ImageTransform.from_processor(processor, train=True)).train()
tuned = evaluate_accuracy(model, test_set, prompts, eval_transform)

print(f"image cache {result.cache_bytes / 2**20:.2f} MiB, built in {result.cache_seconds:.1f} s")
print(f"zero-shot {zero_shot['accuracy']:.3f} -> Skip Tuning {tuned['accuracy']:.3f} (random weights)")
print(f"adapter saved to {args.output_dir}")
