"""One benchmark method in one process: `python benchmarks/methods.py SPEC.json RESULT.json`.

`compare.py` writes the workload (model directory, tokenised prompts, the pixels of the timed images, the batches of
every epoch, the test split) once and starts this script once per method, so every method's peak memory is its own.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
# Run from a checkout: this directory's helpers and the checkout's peft_skip come first.
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "src")]

METHODS = ("ft", "lora", "coop", "skip", "deep", "deep+lskip", "deep+cskip")
# Skip Tuning variants: (image and text cache, CSkip).
SKIP_VARIANTS = {
    "skip": (True, True),
    "deep": (False, False),
    "deep+lskip": (True, False),
    "deep+cskip": (False, True),
}


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def matmul_gflops(clock: Callable[[], float], device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """The machine's matmul rate in this process: GFLOP/s of `(788, 768) @ (768, 3072)` products (four ViT-B/16
    images through an MLP matmul), in `dtype`, by `clock`; the best of three rounds of `seconds / 3`."""
    a = torch.randn(788, 768, device=device).to(dtype)
    b = torch.randn(768, 3072, device=device).to(dtype)
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    best = 0.0
    for _ in range(3):
        count, start = 0, clock()
        while count < 2 or clock() - start < seconds / 3:
            a @ b
            count += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        best = max(best, count * flops / (clock() - start) / 1e9)
    return best


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


class Method:
    """A training method: its trainable parameters, its loss on a batch and its checkpoint.

    Args:
        model (`nn.Module`): The CLIP model, frozen.
        workload (`dict`): What `compare.py` wrote: `prompts`, `train_pixels`, `train_labels`, ...
        spec (`dict`): The run's settings (`skip_layers`, `checkpoint_dir`, ...).
    """

    def __init__(self, model: nn.Module, workload: dict, spec: dict) -> None:
        self.model = model
        self.workload = workload
        self.spec = spec
        self.kept_classes: list[int] = []
        self.use_classes(workload["prompts"], workload["name_prompts"])

    def use_classes(self, prompts: dict[str, torch.Tensor], name_prompts: dict[str, torch.Tensor]) -> None:
        """Scores these classes from now on (the trained ones, or the new ones of base-to-new).

        Args:
            prompts (`dict`): `input_ids` and `attention_mask` of the prompts "a photo of a {}.", shape `(C, L)`.
            name_prompts (`dict`): The same of the bare class names "{}." (CoOp's), shape `(C, L')`.
        """
        self.input_ids = prompts["input_ids"]
        self.attention_mask = prompts["attention_mask"]

    @property
    def base(self) -> nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def build_cache(self, clock: Callable[[], float]) -> float | None:
        """Work done once before training (caches, prototypes), timed as `cache_seconds`.

        Args:
            clock (`Callable[[], float]`): The clock the run is timed with.

        Returns:
            `float` or `None`: Seconds of it spent on the image cache, which `run` scales from the timed to all
            images; `None` if the method has nothing to build.
        """
        return None

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised image features `(B, d)` of pixels `(B, 3, S, S)`."""
        from peft_skip.towers import get_towers

        return get_towers(self.base).image_features(pixels)

    def class_features(self) -> torch.Tensor:
        """Normalised features `(C, d)` of every class."""
        from peft_skip.towers import get_towers

        return get_towers(self.base).text_features(self.input_ids, self.attention_mask)

    def loss(self, positions: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the batch of timed images at `positions`, shape `(B,)`."""
        pixels = self.workload["train_pixels"][positions]
        labels = self.workload["train_labels"][positions]
        logits = self.base.logit_scale.exp() * self.image_features(pixels) @ self.class_features().T
        self.kept_classes.append(logits.shape[1])
        return F.cross_entropy(logits, labels)

    def offload(self) -> AbstractContextManager:
        """What the method takes off the device while it trains (nothing by default)."""
        return nullcontext()

    @torch.no_grad()
    def updates(self) -> dict[str, torch.Tensor]:
        """What training changed, comparable between runs: the change of every trained weight (fp32)."""
        from safetensors import safe_open

        updates = {}
        with safe_open(os.path.join(self.spec["model"], "model.safetensors"), "pt") as initial:
            for name, param in self.model.named_parameters():
                if param.requires_grad:
                    updates[name] = param.float().cpu() - initial.get_tensor(name).float()
        return updates

    def save(self, path: str) -> int:
        """Saves the trainable state as safetensors under `path`; returns its size in bytes."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        state = {name: p.detach().contiguous() for name, p in self.model.named_parameters() if p.requires_grad}
        save_file(state, os.path.join(path, "model.safetensors"))
        return _dir_bytes(path)


class FullFineTuning(Method):
    """Every parameter of both towers (not the temperature), every class every step."""

    def __init__(self, model, workload, spec):
        super().__init__(model, workload, spec)
        model.requires_grad_(True)
        model.logit_scale.requires_grad_(False)


class LoRA(Method):
    """peft LoRA (r=2, alpha=1) on the attention projections of every layer of both towers."""

    def __init__(self, model, workload, spec):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=2, lora_alpha=1, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]
        )
        super().__init__(get_peft_model(model, config), workload, spec)

    def save(self, path: str) -> int:
        self.model.save_pretrained(path)
        return _dir_bytes(path)

    @torch.no_grad()
    def updates(self) -> dict[str, torch.Tensor]:
        from peft.tuners.lora import LoraLayer

        return {
            name: module.get_delta_weight("default").float().cpu()
            for name, module in self.model.named_modules()
            if isinstance(module, LoraLayer)
        }


class CoOp(Method):
    """16 context vectors shared by all classes; the frozen text encoder runs for every class every step."""

    def __init__(self, model, workload, spec):
        self.prompt_learner = None
        super().__init__(model, workload, spec)
        self.initial_ctx = self.prompt_learner.ctx.detach().clone()

    def use_classes(self, prompts, name_prompts):
        from coop import PromptLearner

        # The learned context goes in front of whichever class names are scored.
        ctx = None if self.prompt_learner is None else self.prompt_learner.ctx
        ids, mask = name_prompts["input_ids"], name_prompts["attention_mask"]
        self.prompt_learner = PromptLearner(self.model, ids, mask, n_ctx=16, ctx=ctx)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.prompt_learner.ctx]

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the image tower is frozen and nothing before it is trained
            return super().image_features(pixels)

    def class_features(self) -> torch.Tensor:
        return self.prompt_learner()

    def updates(self) -> dict[str, torch.Tensor]:
        return {"ctx": (self.prompt_learner.ctx.detach() - self.initial_ctx).float().cpu()}

    def save(self, path: str) -> int:
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        save_file({"ctx": self.prompt_learner.ctx.detach()}, os.path.join(path, "model.safetensors"))
        return _dir_bytes(path)


class SkipVariant(Method):
    """Skip Tuning and its ablations: deltas on layers >= ω of both towers, with or without caches and CSkip.

    With the cache, a step is `peft_skip.loss.skip_tuning_loss` on cached states at layer ω; without it, the
    shallow layers run (without gradients) every step, for every image and for the prompts of the kept classes.
    """

    def __init__(self, model, workload, spec):
        from peft import get_peft_model

        import peft_skip
        from peft_skip.classes import ClassSelector

        self.use_cache, cskip = SKIP_VARIANTS[spec["method"]]
        config = peft_skip.SkipConfig(
            skip_layers=spec["skip_layers"],
            class_ratio=spec["class_ratio"] if cskip else 1.0,
            max_classes=spec["max_classes"],
            class_decay=spec["class_decay"],
        )
        super().__init__(get_peft_model(model, config), workload, spec)
        self.config = config
        self.towers = peft_skip.get_towers(self.model)
        num_classes = self.input_ids.shape[0]
        generator = torch.Generator().manual_seed(spec["seed"])
        self.selector = ClassSelector(
            num_classes, config.class_ratio, config.max_classes, config.class_decay, generator=generator
        )

    def build_cache(self, clock: Callable[[], float]) -> float | None:
        from peft_skip.cache import ImageCache, build_text_cache

        # The step validates them even when every class is kept, as the trainer does.
        with torch.no_grad(), self.model.disable_adapter():
            self.prototypes = super().class_features()
        if not self.use_cache:
            return 0.0
        pixels = self.workload["train_pixels"]
        start = clock()
        self.image_cache = ImageCache.build(
            self.towers.vision,
            lambda view, indices: pixels[indices],
            num_images=len(pixels),
            skip_layers=self.config.skip_layers,
            views=1,
            dtype=getattr(torch, self.spec["cache_dtype"]),
        )
        image_seconds = clock() - start
        self.text_cache = build_text_cache(
            self.towers.text, self.input_ids, self.attention_mask, self.config.skip_layers
        )
        return image_seconds

    def loss(self, positions: torch.Tensor) -> torch.Tensor:
        from peft_skip.loss import skip_tuning_loss

        labels = self.workload["train_labels"][positions]
        if self.use_cache:
            states = self.image_cache.get(positions, 0)
            out = skip_tuning_loss(
                self.towers, states, labels, self.text_cache, self.prototypes, self.selector, self.config
            )
            self.kept_classes.append(out.logits.shape[1])
            return out.loss
        vision, text, skip = self.towers.vision, self.towers.text, self.config.skip_layers
        with torch.no_grad():
            hidden = vision.embed(**vision.image_inputs(self.workload["train_pixels"][positions]))
            hidden = vision.run_layers(hidden, 0, skip)
        image = F.normalize(vision.pool(vision.run_layers(hidden, skip, vision.num_layers)), dim=-1)
        kept, targets = self.selector.select(image.detach(), self.prototypes, labels)
        input_ids, attention_mask = self.input_ids[kept], self.attention_mask[kept]
        with torch.no_grad():
            hidden = text.run_layers(text.embed(input_ids=input_ids), 0, skip, attention_mask=attention_mask)
        hidden = text.run_layers(hidden, skip, text.num_layers, attention_mask=attention_mask)
        classes = F.normalize(text.pool(hidden, input_ids), dim=-1)
        self.kept_classes.append(len(kept))
        return F.cross_entropy(self.towers.logit_scale.exp() * image @ classes.T, targets)

    def offload(self) -> AbstractContextManager:
        # As the trainer does: the base weights of the deep layers, and with the caches the shallow ones, leave.
        from peft_skip.offload import FrozenOffload, idle_parameters

        if not self.spec.get("offload", True):
            return nullcontext()
        return FrozenOffload(self.model, idle_parameters(self.model, from_caches=self.use_cache))

    def updates(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {name: delta.float().cpu() for name, delta in get_peft_model_state_dict(self.model).items()}

    def save(self, path: str) -> int:
        self.model.save_pretrained(path)
        return _dir_bytes(path)


def make_method(model: nn.Module, workload: dict, spec: dict) -> Method:
    name = spec["method"]
    if name == "ft":
        return FullFineTuning(model, workload, spec)
    if name == "lora":
        return LoRA(model, workload, spec)
    if name == "coop":
        return CoOp(model, workload, spec)
    if name in SKIP_VARIANTS:
        return SkipVariant(model, workload, spec)
    raise ValueError(f"Unknown method {name!r}; expected one of {METHODS}.")


@torch.no_grad()
def accuracy(method: Method, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int = 32) -> float | None:
    """Top-1 accuracy of the full model (all layers, no cache) among the classes the method scores.

    Args:
        method (`Method`): The trained (or untouched) method.
        pixels (`torch.Tensor`): Images, shape `(N, 3, S, S)`.
        labels (`torch.Tensor`): Their classes, shape `(N,)`.
        batch_size (`int`): Images per forward.
    """
    if len(labels) == 0:
        return None
    method.model.eval()
    classes = method.class_features()
    correct = 0
    for start in range(0, len(labels), batch_size):
        images = method.image_features(pixels[start : start + batch_size])
        correct += int((images @ classes.T).argmax(-1).eq(labels[start : start + batch_size]).sum())
    return correct / len(labels)


def evaluate(method: Method, eval_sets: dict[str, dict]) -> dict[str, float | None]:
    """Accuracy on every evaluation set among its own classes (`all`, or `base` and `new`), and for base-to-new
    their harmonic mean `hm`."""
    from peft_skip.evaluation import harmonic_mean

    accuracies = {}
    for name, images in eval_sets.items():
        method.use_classes(images["prompts"], images["name_prompts"])
        accuracies[name] = accuracy(method, images["pixels"], images["labels"])
    if accuracies.keys() == {"base", "new"} and None not in accuracies.values():
        accuracies["hm"] = harmonic_mean(accuracies["base"], accuracies["new"])
    return accuracies


def headline(accuracies: dict[str, float | None]) -> float | None:
    """The one accuracy of a run: over all classes, or the harmonic mean of base and new."""
    return accuracies.get("hm", accuracies.get("all"))


def load_workload(path: str, device: torch.device) -> dict:
    """`workload.pt` with every tensor on `device`."""

    def to(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, dict):
            return {k: to(v) for k, v in value.items()}
        if isinstance(value, list):
            return [to(v) for v in value]
        return value

    workload = torch.load(path, weights_only=False)
    return {k: v if k == "batches" else to(v) for k, v in workload.items()}


def run(spec: dict) -> dict:
    """Trains `spec["method"]` on the workload for the timed steps and measures it."""
    from transformers import CLIPModel

    torch.manual_seed(spec["seed"])
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    baseline_mb = peak_memory_mb(torch.device("cpu"))
    workload = load_workload(spec["workload"], device)
    model = CLIPModel.from_pretrained(spec["model"]).to(device).requires_grad_(False)
    full_model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    method = make_method(model, workload, spec)
    method.model.train()
    trainable = method.trainable_parameters()
    optimizer = torch.optim.SGD(trainable, lr=spec["lr"], momentum=0.9, weight_decay=5e-4)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    clock = time.process_time if spec["clock"] == "cpu" else time.perf_counter
    start = clock()
    image_cache_seconds = method.build_cache(clock)
    sync()
    setup_seconds = clock() - start - (image_cache_seconds or 0.0)

    precision = spec.get("mixed_precision", "no")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    peak_gflops = matmul_gflops(clock, device, half or torch.float32)
    # fp16 gradients need loss scaling; a disabled scaler passes everything through.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    wall_seconds, cpu_seconds, losses = [], [], []
    with method.offload():
        for batches in workload["batches"]:
            start, start_cpu = time.perf_counter(), time.process_time()
            for positions in batches:
                with torch.autocast(device.type, dtype=half, enabled=half is not None):
                    loss = method.loss(positions.to(device))
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
            sync()
            wall_seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - start_cpu)
        peak_mb = peak_memory_mb(device)

    steps = len(workload["batches"][0])
    # CPU time of this process is what a single-threaded run costs, whatever else the machine runs meanwhile.
    epoch_seconds = cpu_seconds if spec["clock"] == "cpu" else wall_seconds
    timed = epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds
    step_seconds = statistics.median(timed) / steps
    full_steps = workload["full_steps_per_epoch"]
    checkpoint_bytes = method.save(spec["checkpoint_dir"])
    if spec.get("updates_file"):
        from safetensors.torch import save_file

        save_file(method.updates(), spec["updates_file"])
    cached_images = len(workload["train_pixels"])
    accuracies = evaluate(method, workload["eval_sets"])
    return {
        "method": spec["method"],
        "mixed_precision": precision,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "epoch_seconds": step_seconds * full_steps,
        "step_seconds": step_seconds,
        "clock": spec["clock"],
        "measured_epoch_wall_seconds": wall_seconds,
        "measured_epoch_cpu_seconds": cpu_seconds,
        "timed_steps_per_epoch": steps,
        "full_steps_per_epoch": full_steps,
        # The image cache is built for the timed images only: its time is scaled to the whole training set.
        "cache_seconds": 0.0
        if image_cache_seconds is None
        else setup_seconds + image_cache_seconds * workload["num_train_images"] / cached_images,
        "images_per_second": workload["batch_size"] / step_seconds,
        "peak_memory_mb": peak_mb,
        "baseline_memory_mb": baseline_mb,
        "trainable_params": sum(p.numel() for p in trainable),
        "checkpoint_bytes": checkpoint_bytes,
        "full_model_bytes": full_model_bytes,
        "kept_classes": statistics.mean(method.kept_classes),
        "matmul_gflops_per_second": peak_gflops,
        "losses": losses,
        "final_loss": losses[-1],
        "losses_finite": all(math.isfinite(x) for x in losses),
        "lr": spec["lr"],
        "accuracies": accuracies,
        "accuracy": headline(accuracies),
    }


def main() -> None:
    spec_path, result_path = sys.argv[1:3]
    with open(spec_path) as f:
        spec = json.load(f)
    result = run(spec)
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
