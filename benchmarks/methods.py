"""The methods `compare.py` compares: what each trains, its loss on a batch of the workload and its checkpoint.

Each runs in a process of its own (`method_run.py`), so that every method's peak memory is its own.
"""

from __future__ import annotations

import os
import sys
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

    With the cache, a step is `peft_skip.training.loss.skip_tuning_loss` on cached states at layer ω; without it, the
    shallow layers run (without gradients) every step, for every image and for the prompts of the kept classes.
    """

    def __init__(self, model, workload, spec):
        from peft import get_peft_model

        import peft_skip
        from peft_skip.training.classes import ClassSelector

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
        from peft_skip.training.cache import ImageCache, build_text_cache

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
        from peft_skip.training.loss import skip_tuning_loss

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
        from peft_skip.training.offload import FrozenOffload, idle_parameters

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
