"""A whole experiment as the command line runs it, callable from Python too: the few-shot data, zero-shot accuracy,
Skip Tuning, the tuned accuracy and `metrics.json` (`train_and_evaluate`); or the accuracy of a saved adapter
(`evaluate_saved`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random

import torch
import transformers

from ..data import (
    ImageDataset,
    ImageTransform,
    sample_few_shot,
    short_classes,
    split_base_new,
    subset_classes,
)
from ..data.splits import check_same_classes, check_shots
from ..offline import has_random_weights
from ..training.accelerator import make_accelerator
from ..training.evaluation import evaluate_protocol, summary, tokenize_classes
from ..training.finite import NonFiniteLossError
from ..training.output_dir import CARD_NAME, check_out_apart, check_writable, claim_output_dir, may_write
from ..training.precision import to_reference_fp16
from ..training.preflight import check_images_readable, check_launch
from ..training.publishing import write_json
from ..training.recipes import REFERENCE_DATASETS
from ..training.tracking import eval_scalars, start_tracking
from ..training.trainer import SkipTrainer
from ..training.training_args import SkipTrainingArguments
from ..tuner.card import build_card, write_card
from ..tuner.config import SkipConfig
from ..tuner.hub import create_hub_repo, hub_repo_id, push_adapter
from .arguments import DataArguments, EvalArguments, ModelArguments

logger = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Whether this is the main process of a launch (rank 0), read before Accelerate's state is created."""
    return int(os.environ.get("RANK", "0")) == 0


def load_model(model_args: ModelArguments, say=print):
    """The model (in eval mode) and processor of `model_args.model`; says so when its weights are random."""
    model = transformers.AutoModel.from_pretrained(model_args.model).eval()
    processor = transformers.AutoProcessor.from_pretrained(model_args.model)
    if has_random_weights(model):
        say(
            f"NOTE: {model_args.model} has RANDOM weights (no pretrained checkpoint can be downloaded here). The run "
            "checks the mechanics, speed and memory; its accuracies say nothing about Skip Tuning on a real CLIP."
        )
    return model, processor


def test_set(data: DataArguments) -> ImageDataset:
    """The evaluated split; with `test_limit`, a fixed subset of it, the same for every seed and command."""
    test = data.load(data.split)
    if data.test_limit and data.test_limit < len(test):
        test = test.subset(sorted(random.Random(0).sample(range(len(test)), data.test_limit)))
    return test.with_decoding(data.resolved_decoding())


def _inputs(model_args: ModelArguments, data: DataArguments) -> dict[str, str | None]:
    """The directories a run reads, by flag: its `--out` must lie apart from them."""
    spec = data.data.removeprefix("imagefolder:").removeprefix("hf:")
    return {"--model": model_args.model, "--data": spec, "--data_root": data.data_root}


def train_and_evaluate(
    model_args: ModelArguments, data: DataArguments, config: SkipConfig, training: SkipTrainingArguments
) -> dict:
    """Few-shot Skip Tuning with zero-shot and tuned accuracy; writes the adapter and `metrics.json`.

    Every check that needs no model (launch, `output_dir`, data, images) runs first.

    Returns:
        `dict`: The metrics (also in `output_dir/metrics.json`).

    Raises:
        NonFiniteLossError: The loss, a gradient, a weight or the tuned model's evaluation logits became NaN or
            infinite; no adapter is saved, the last good checkpoint is kept.
    """
    check_launch()
    check_out_apart(training.output_dir, _inputs(model_args, data) | {"--cache_dir": training.cache_dir})
    if training.cache_dir:
        check_writable(training.cache_dir, "--cache-dir")
    # An unusable, foreign or busy output_dir fails here, before the zero-shot evaluation and the first epoch.
    with claim_output_dir(training.output_dir, is_main_process(), training.overwrite_output_dir):
        return _train_and_evaluate(model_args, data, config, training)


def _train_and_evaluate(
    model_args: ModelArguments, data: DataArguments, config: SkipConfig, training: SkipTrainingArguments
) -> dict:
    from peft import get_peft_model

    if training.disable_tqdm:
        transformers.utils.logging.disable_progress_bar()
    accelerator = make_accelerator(training.mixed_precision, training.report_to, training.output_dir)
    say = accelerator.print
    say(training.precision_note())
    recipe = training.recipe()
    if data.data in REFERENCE_DATASETS and training.recipe_dataset != data.data:
        logger.warning(
            f"Training on {data.data} with the recipe of {training.recipe_dataset or 'no dataset'}: set "
            f"recipe_dataset={data.data!r} for the paper's {data.data} recipe (its epochs and template)."
        )
    # Several templates: evaluation averages them, training uses the first (the reference trains on one).
    templates = data.resolved_templates(recipe.train_template if training.recipe_dataset else None)
    train_set = data.load("train")
    check_shots(train_set, training.shots)
    train_set = sample_few_shot(train_set, training.shots, training.seed)
    test = test_set(data)
    base_new = None
    if training.protocol == "base_to_new":
        check_same_classes(train_set, test)
        base_new = split_base_new(train_set)
        train_set = subset_classes(train_set, base_new[0])
    short = short_classes(train_set, training.shots)
    if short:
        logger.warning(f"Classes with fewer than {training.shots} images, trained on all they have: {short}")
    train_set = train_set.with_decoding(data.resolved_decoding())
    check_images_readable(train_set)
    repo_id = None
    if training.push_to_hub and accelerator.is_main_process:
        repo_id = create_hub_repo(hub_repo_id(training.output_dir, training.hub_model_id), training.hub_private_repo)
        say(f"Hub repository: {repo_id}")
    model, processor = load_model(model_args, say)
    classes = len(train_set.class_names)
    kept_whole = f"; {len(short)} with fewer, kept whole" if short else ""
    say(f"{data.data}: {len(train_set)} training images ({training.shots} shots x {classes} classes{kept_whole})")

    if training.precision == "fp16_reference":
        to_reference_fp16(model)  # before the zero-shot evaluation, so that both accuracies use the same weights
    model.to(accelerator.device)
    eval_transform = ImageTransform.from_processor(processor, train=False)

    def evaluate() -> dict:
        tokenizer, batch_size = processor.tokenizer, data.per_device_eval_batch_size
        workers, progress = training.dataloader_num_workers, not training.disable_tqdm
        return evaluate_protocol(
            model, tokenizer, test, eval_transform, templates, base_new, batch_size, workers, progress
        )

    model = get_peft_model(model, config)
    prompts = tokenize_classes(model, processor.tokenizer, train_set.class_names, templates[0])
    transform = ImageTransform.from_processor(processor, train=True, scale=(training.crop_min_area, 1.0))
    trainer = SkipTrainer(model, training, train_set, prompts, transform, accelerator=accelerator)
    if training.resume_from_checkpoint:
        trainer.check_resume()  # another run's checkpoint is refused before the zero-shot evaluation
    tracking = start_tracking(accelerator, training, config)  # started here to report the evaluations too
    with model.disable_adapter():
        zero_shot = evaluate()
    say(f"zero-shot accuracy (base model): {summary(zero_shot)}")
    accelerator.log(eval_scalars(zero_shot), step=0)
    with torch.autograd.set_detect_anomaly(training.detect_anomaly):
        result = trainer.train(save_final=False)
    say(
        f"image cache: {result.cache_bytes / 2**20:.1f} MiB per process, built in {result.cache_seconds:.1f} s in "
        f"total; training {result.train_seconds:.1f} s"
    )
    try:
        tuned = evaluate()
    except FloatingPointError as error:  # finite weights can still overflow: stop before saving them as a result
        raise NonFiniteLossError(f"{error} The tuned adapter was not saved.") from None
    trainer.save_model()
    accelerator.log(eval_scalars(tuned), step=training.num_train_epochs)
    say(f"zero-shot accuracy (base model): {summary(zero_shot)}")
    say(f"Skip Tuning accuracy:            {summary(tuned)}")
    metrics = {
        "model": model_args.model,
        "random_weights": has_random_weights(model.get_base_model()),
        "data": dataclasses.asdict(data) | {"template": templates[0], "eval_templates": templates},
        "train_classes": train_set.class_names,  # under base-to-new, the base classes only
        "num_processes": accelerator.num_processes,
        "training_arguments": training.run_identity(),
        # What the draw gave: `shots` per class but for the short classes, kept whole (as Dassl keeps them).
        "train_images": len(train_set),
        "short_classes": short,
        "base_new_classes": None if base_new is None else dict(zip(("base", "new"), base_new, strict=True)),
        "skip_config": config.method_settings(),
        "zero_shot": zero_shot,
        "tuned": tuned,
        "cache_bytes_per_process": result.cache_bytes,
        "cache_seconds": result.cache_seconds,
        "train_seconds": result.train_seconds,
        "resumed_from_epoch": result.resumed_from_epoch,
        "history": result.history,
    }
    if accelerator.is_main_process:
        adapter = model.peft_config[model.active_adapter]
        name = repo_id or os.path.basename(os.path.abspath(training.output_dir))
        card = build_card(adapter.base_model_name_or_path, config.method_settings(), metrics, name, training.license)
        if may_write(training.output_dir, CARD_NAME):  # a user's README.md is kept
            write_card(training.output_dir, card)  # now with the accuracies
        write_json(os.path.join(training.output_dir, "metrics.json"), metrics)
        say(f"adapter and metrics.json written to {training.output_dir}")
        if repo_id:
            say(f"uploaded to the Hub: {push_adapter(training.output_dir, repo_id)}")
    if tracking:
        accelerator.end_training()
    return metrics


def load_saved_adapter(model, adapter_dir: str):
    """`model` with the Skip Tuning adapter saved in `adapter_dir`, read with Skip Tuning's own checks (peft's reader
    would fail on a broken file without naming it)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir, config=SkipConfig.from_pretrained(adapter_dir))


def evaluate_saved(model_args: ModelArguments, data: DataArguments, eval_args: EvalArguments) -> dict:
    """Accuracy of the base model, or with the adapter `eval_args.adapter`; written to `eval_args.output_dir`'s
    `eval_results.json` when given, else printed.

    An `output_dir` is claimed first, as `train` claims its own: one run at a time, and never a directory of the user's
    (unless `overwrite_output_dir`) or the model's or data's.
    """
    out = eval_args.output_dir
    if not out:
        return _evaluate_saved(model_args, data, eval_args)
    check_out_apart(out, _inputs(model_args, data))
    with claim_output_dir(out, is_main_process(), eval_args.overwrite_output_dir):
        return _evaluate_saved(model_args, data, eval_args)


def _evaluate_saved(model_args: ModelArguments, data: DataArguments, eval_args: EvalArguments) -> dict:
    if eval_args.disable_tqdm:
        transformers.utils.logging.disable_progress_bar()
    accelerator = make_accelerator()
    model, processor = load_model(model_args, accelerator.print)
    if eval_args.adapter is not None:
        model = load_saved_adapter(model, eval_args.adapter)
    if eval_args.precision == "fp16_reference":
        to_reference_fp16(model)
    model.to(accelerator.device)
    transform = ImageTransform.from_processor(processor, train=False)
    test = test_set(data)
    base_new = split_base_new(test) if eval_args.protocol == "base_to_new" else None
    result = evaluate_protocol(
        model,
        processor.tokenizer,
        test,
        transform,
        data.resolved_templates(),
        base_new,
        batch_size=data.per_device_eval_batch_size,
        num_workers=eval_args.dataloader_num_workers,
        progress=not eval_args.disable_tqdm,
    )
    result = {
        "model": model_args.model,
        "adapter": eval_args.adapter,
        "protocol": eval_args.protocol,
        "precision": eval_args.precision,
        **dataclasses.asdict(data),
        **result,
    }
    accelerator.print(f"accuracy ({eval_args.precision}): {summary(result)}")
    if accelerator.is_main_process:
        if eval_args.output_dir:
            write_json(os.path.join(eval_args.output_dir, "eval_results.json"), result)
        else:
            print(json.dumps(result, indent=2))
    return result
