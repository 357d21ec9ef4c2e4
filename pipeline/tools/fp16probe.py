"""fp16 headroom, measured in fp32 on any machine: how close a model comes to fp16's largest
finite value, 65,504, before a T4 run in fp16 is paid for.

    python -m pipeline fp16-probe [--params FILE ...] [--set KEY=VALUE ...] [--checkpoint DIR]

Under train.precision fp16 (a T4, any GPU without native bf16) autocast runs every matmul in fp16:
the input and output of each nn.Linear (GPT-2's Conv1D: addmm) are held in fp16, the SwiGLU
product act(gate(x)) * up(x) among them (it is the down projection's input), and so are the
gradients flowing back through those outputs, multiplied by GradScaler's loss scale. The residual
stream, the norms, softmax and the loss stay fp32 (autocast's fp32 ops, or an fp16 term added to
an fp32 one), so they are not counted. The probe runs an fp32 forward and backward of the model
(--checkpoint: any checkpoint or final model directory; else the planned model as initialized) on
validation batches from the token files, hooks every matmul module, and records per layer the
largest magnitude of each tensor fp16 would hold, and the attention logits q.k/sqrt(d), which
SDPA's math kernel holds in fp16 (the fused kernels keep them in fp32 registers).

Verdict (exit 2, and reports/fp16-probe.md says which tensor): an activation within SAFETY (8x) of
65,504. Why 8x: activations grow as training goes on (SwiGLU outliers grow over long runs: Fishman
et al. 2024, arXiv:2409.12517), a few batches are not the worst a run meets, and one overflowing
element makes the loss inf, after which GradScaler skips steps until the divergence guard stops the
run: 8x is three doublings of growth. Gradients are reported at the scale GradScaler starts at
(2^16): an overflow there costs one skipped step and halves the scale, so the report gives the
scale it settles at, and a gradient fails only where even a scale of 1 leaves less than SAFETY.
Run it on later checkpoints too: the margin of a trained model is the one that matters.
"""
from __future__ import annotations

import argparse
import math
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params

FP16_MAX = float(torch.finfo(torch.float16).max)   # 65504
SAFETY = 8.0
LOSS_SCALE = 2.0 ** 16      # torch.amp.GradScaler's init_scale
BATCHES, SEQUENCES = 4, 4   # validation windows: 4 batches of 4 sequences of model.context tokens
MATMULS = (torch.nn.Linear, Conv1D)


@dataclass
class Peak:
    value: float = 0.0
    tensor: str = ""

    def see(self, value: float, tensor: str) -> None:
        if not value <= self.value:  # NaN and inf are seen too
            self.value, self.tensor = value, tensor


@dataclass
class Layer:
    name: str                                       # "block 3", "lm_head"
    activation: Peak = field(default_factory=Peak)  # largest |x| of a tensor autocast holds in fp16
    gradient: Peak = field(default_factory=Peak)    # largest |grad| before loss scaling

    @property
    def activation_margin(self) -> float:
        return FP16_MAX / self.activation.value if self.activation.value else math.inf

    @property
    def gradient_margin(self) -> float:
        """At GradScaler's starting scale."""
        return FP16_MAX / (self.gradient.value * LOSS_SCALE) if self.gradient.value else math.inf


@dataclass
class Headroom:
    layers: list[Layer]
    batches: int
    source: str                                      # which weights were probed

    @property
    def worst_activation(self) -> Layer:
        return min(self.layers, key=lambda layer: layer.activation_margin)

    @property
    def worst_gradient(self) -> Layer:
        return min(self.layers, key=lambda layer: layer.gradient_margin)

    @property
    def settled_loss_scale(self) -> float:
        """The largest power of two, up to 2^16, keeping every gradient SAFETY below fp16's max:
        about where GradScaler's halving on overflow brings the scale."""
        largest = self.worst_gradient.gradient.value
        if not largest:
            return LOSS_SCALE
        return min(LOSS_SCALE, 2.0 ** math.floor(math.log2(FP16_MAX / (SAFETY * largest))))

    def problems(self) -> list[str]:
        found = []
        worst = self.worst_activation
        if worst.activation_margin < SAFETY:
            found.append(f"fp16 headroom: {worst.activation.tensor} reaches {worst.activation.value:.4g}, "
                         f"{worst.activation_margin:.3g}x below fp16's {FP16_MAX:g} (needed: {SAFETY:g}x): in fp16 "
                         "it overflows or soon will; train in bf16 or fp32 on this model, or fix the layer "
                         "(fp32 for that op, a clamp, z-loss)")
        if self.settled_loss_scale < 1:
            g = self.worst_gradient
            found.append(f"fp16 headroom: the gradient at {g.gradient.tensor} reaches {g.gradient.value:.4g} "
                         f"unscaled, within {SAFETY:g}x of fp16's {FP16_MAX:g} even at loss scale 1")
        return found

    def as_dict(self) -> dict[str, Any]:
        return {"fp16_max": FP16_MAX, "safety": SAFETY, "loss_scale": LOSS_SCALE, "batches": self.batches,
                "source": self.source, "settled_loss_scale": self.settled_loss_scale,
                "layers": [{**asdict(layer), "activation_margin": layer.activation_margin,
                            "gradient_margin": layer.gradient_margin} for layer in self.layers],
                "problems": self.problems()}


def layer_of(module_name: str) -> str:
    """model.layers.3.mlp.up_proj / transformer.h.3.mlp.c_fc -> block 3; lm_head -> lm_head."""
    found = re.search(r"\.(\d+)\.", f".{module_name}.")
    return f"block {found.group(1)}" if found else module_name


def probe(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], source: str) -> Headroom:
    """fp32 forward and backward of `model` on each (inputs, targets) batch, as the train step's
    loss (mean next-token cross-entropy); the peaks of what fp16 would hold, per layer."""
    layers: dict[str, Layer] = {}
    model.train()  # as trained: dropout on where params set it
    matmuls = [(name, module) for name, module in model.named_modules() if isinstance(module, MATMULS)]
    with _hooks(matmuls, layers), _attention_logits(model, layers):
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=x, use_cache=False).logits
            F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
            for name, module in matmuls:  # a weight's gradient leaves the fp16 matmul before fp32 accumulation
                if module.weight.grad is not None:
                    layers[layer_of(name)].gradient.see(_largest(module.weight.grad), f"{name} weight gradient")
    model.zero_grad(set_to_none=True)
    return Headroom(layers=list(layers.values()), batches=len(batches), source=source)


def _largest(tensor: torch.Tensor) -> float:
    return float(tensor.detach().abs().max()) if tensor.numel() else 0.0


@contextmanager
def _hooks(matmuls: list[tuple[str, torch.nn.Module]], layers: dict[str, Layer]) -> Iterator[None]:
    def record(name: str):
        layer = layers.setdefault(layer_of(name), Layer(layer_of(name)))

        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            layer.activation.see(_largest(inputs[0]), f"{name} input")
            layer.activation.see(_largest(output), f"{name} output")
            if output.requires_grad:
                output.register_hook(lambda grad: layer.gradient.see(_largest(grad), f"{name} output gradient"))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in matmuls]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _attention_logits(model: torch.nn.Module, layers: dict[str, Layer]) -> Iterator[None]:
    """Transformers' sdpa attention calls torch.nn.functional.scaled_dot_product_attention once per
    block, in block order: record each call's largest q.k * scale under its block."""
    original = F.scaled_dot_product_attention
    blocks = model.config.num_hidden_layers
    calls = [0]

    def spy(query, key, value, *args, **kwargs):
        scale = kwargs.get("scale") or 1 / math.sqrt(query.size(-1))
        if key.size(1) != query.size(1):  # grouped keys, repeated as the kernel does
            key = key.repeat_interleave(query.size(1) // key.size(1), dim=1)
        with torch.no_grad():
            logits = (query @ key.transpose(-2, -1)) * scale
        name = f"block {calls[0] % blocks}"
        calls[0] += 1
        layers.setdefault(name, Layer(name)).activation.see(_largest(logits), f"{name} attention logits (math kernel)")
        return original(query, key, value, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


# ---- the model and the batches, as params describe them ----------------------------------------------

def validation_batches(params: Params, count: int = BATCHES, sequences: int = SEQUENCES,
                       device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    from pipeline.data.batches import stack_windows, val_starts
    from pipeline.data.tokens import read_tokens

    path = Path(params.paths.tokens) / "val.bin"
    if not path.is_file():
        raise PipelineError(f"{path} not found: the probe runs on the token files; run the tokenize stage first "
                            "(python -m pipeline tokenize) or set paths.tokens")
    context = params.model.context
    starts = val_starts(path, context, count * sequences)
    tokens = read_tokens(path)
    return [tuple(t.to(device) for t in stack_windows(tokens, starts[i:i + sequences], context))
            for i in range(0, len(starts), sequences)]


def model_for(params: Params, checkpoint: Path | None, device: str = "cpu") -> tuple[torch.nn.Module, str]:
    """The weights in `checkpoint` (a checkpoints/step-N or model directory), else params.model as
    train.seed initializes it; and what they are, for the report."""
    if checkpoint is not None:
        from pipeline.evaluation.loading import load_model

        if not (checkpoint / "config.json").is_file():
            raise PipelineError(f"--checkpoint {checkpoint}: no model there (no config.json): give a "
                                "checkpoints/step-N directory or the trained model's (paths.model)")
        return load_model(checkpoint, torch.device(device)), str(checkpoint)
    from pipeline.data.tokens import MANIFEST_FILE, TokenManifest
    from pipeline.model.build import build_model

    manifest = TokenManifest.read(Path(params.paths.tokens) / MANIFEST_FILE)
    torch.manual_seed(params.train.seed)
    model = build_model(params.model, manifest.vocab_size, manifest.eot_token_id).to(device)
    return model, "params.model as initialized (train.seed)"


def after_training(params: Params, steps: int, *, device: str, precision: str) -> Headroom:
    """params.model trained `steps` optimizer steps by the train stage's own Training (model,
    optimizer, LR schedule, step) on the token files' training windows, then probed: activations
    grow as a model trains, so a fresh model's margin says little."""
    from pipeline.data.batches import TrainWindows
    from pipeline.data.tokens import MANIFEST_FILE, TRAIN_FILE, TokenManifest
    from pipeline.engine.training import build_training

    tokens = Path(params.paths.tokens)
    manifest = TokenManifest.read(tokens / MANIFEST_FILE)
    sequences = params.train.tokens_per_step // params.model.context
    training = build_training(params, manifest.vocab_size, manifest.eot_token_id, device=device, precision=precision,
                              activation_checkpointing=False)
    windows = TrainWindows(tokens / TRAIN_FILE, params.model.context, sequences, params.train.seed)
    for index in range(steps):
        training.step(index, lambda micro: windows.batch(index, micro, 0, 1, sequences), 1)
    return probe(training.raw, validation_batches(params, device=device),
                 f"params.model after {steps} training steps in {precision} on {device}")


# ---- the report and the command ------------------------------------------------------------------------

def markdown(headroom: Headroom) -> str:
    lines = [f"# fp16 headroom: {headroom.source}", "",
             f"The largest magnitude of each tensor autocast holds in fp16, per layer, on {headroom.batches} "
             f"validation batches (fp32 forward and backward); margin = {FP16_MAX:g} / that value, needed: "
             f"{SAFETY:g}x. Gradients at GradScaler's starting scale 2^16.", "",
             "| layer | largest activation | tensor | margin | largest gradient x 2^16 | tensor | margin |",
             "| --- | ---: | --- | ---: | ---: | --- | ---: |"]
    for layer in headroom.layers:
        lines.append(f"| {layer.name} | {layer.activation.value:.4g} | {layer.activation.tensor} | "
                     f"{layer.activation_margin:.3g}x | {layer.gradient.value * LOSS_SCALE:.4g} | "
                     f"{layer.gradient.tensor} | {layer.gradient_margin:.3g}x |")
    worst = headroom.worst_activation
    lines += ["", f"Smallest activation margin: {worst.activation_margin:.3g}x ({worst.activation.tensor}). "
                  f"GradScaler settles near loss scale {headroom.settled_loss_scale:g}.", ""]
    lines += [f"**problem**: {p}" for p in headroom.problems()] or ["fp16 headroom: ok"]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="DIR",
                        help="a checkpoints/step-N or model directory (default: params.model as initialized)")
    parser.add_argument("--batches", type=int, default=BATCHES, help=f"validation batches (default: {BATCHES})")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default: paths.reports)")


def main(params: Params, args: argparse.Namespace) -> int:
    from pipeline.core.atomic import write_json, write_text

    if args.batches < 1:
        raise PipelineError(f"--batches {args.batches}: give 1 or more")
    model, source = model_for(params, args.checkpoint)
    headroom = probe(model, validation_batches(params, args.batches), source)
    out = Path(args.out or params.paths.reports)
    text = markdown(headroom)
    write_json(out / "fp16-probe.json", headroom.as_dict())
    write_text(out / "fp16-probe.md", text)
    print(text, end="")
    print(f"fp16-probe: wrote {out / 'fp16-probe.md'}")
    return 2 if headroom.problems() else 0
