"""Configuration records for the models package.

`ModelConfig` and `TrainConfig` are frozen dataclasses whose defaults are the thesis' values
(α=0.5, β=0.3, γ=0.2, tolerance 1e-5, Adam at 1e-3, batch 64). Both round-trip through plain
dicts (`to_dict` / `from_dict`), and `from_dict` rejects unknown keys so that a typo in a search
space fails loudly instead of silently training the default.

`ModelSpec` describes the data a model is built for; `TensorPair` holds one split of it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch

from models.contraction import STATE_PATHS
from models.fpi import BACKWARD_MODES
from models.fpi import SOLVERS as FPI_SOLVERS

ModelKind = Literal["dynalay", "plain", "fpi1", "fpi2", "fpi3", "deq"]
BackwardMode = Literal["implicit", "phantom", "jfb", "unroll"]
Task = Literal["image", "sequence", "language_model"]

MODEL_KINDS: tuple[str, ...] = ("dynalay", "plain", "fpi1", "fpi2", "fpi3", "deq")
DEQ_SOLVERS: tuple[str, ...] = ("anderson", "broyden")
BASELINES: tuple[str, ...] = ("ema", "batch", "plain")
CONTRACTION_BOUNDS: tuple[str, ...] = ("circular", "taps")
PATH_LOSSES: tuple[str, ...] = ("routed", "every")
POLICY_GRADIENTS: tuple[str, ...] = ("reinforce", "expected")
REWARD_COSTS: tuple[str, ...] = ("depth", "flops")
REWARD_HITS: tuple[str, ...] = ("correct", "probability")
TASKS: tuple[str, ...] = ("image", "sequence", "language_model")

_Config = TypeVar("_Config", bound="_DictConfig")


class _DictConfig:
    """Mixin: strict construction from a dict and conversion back."""

    @classmethod
    def from_dict(cls: type[_Config], d: dict[str, Any]) -> _Config:
        """Builds the config from `d`; a key that is not a field raises ValueError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in d:
            if key not in names:
                raise ValueError(
                    f"unknown {cls.__name__} key {key!r}; expected one of {sorted(names)}"
                )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON/YAML friendly)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}={value!r} must be > 0")


@dataclass(frozen=True)
class ModelConfig(_DictConfig):
    """What to build and how its fixed-point layers and agent behave.

    Attributes:
        kind: `dynalay` (agent-selected FPI), `plain` (Model 0), `fpi1`..`fpi3` (static FPI on
            layers 1..k, Models 1-3) or `deq` (TorchDEQ on all three layers).
        width: channel width w of the CNN (layers have w, 2w, 4w channels).
        fwd_tol: forward stopping tolerance on ‖f(z) − z‖ / ‖f(z)‖, per sample.
        bwd_tol: tolerance of the adjoint fixed-point iteration (`implicit` backward, DEQ).
        max_iter: most applications of f per layer and solve (forward and backward).
        backward: `implicit` (adjoint fixed point), `phantom` (the adjoint stopped after
            `phantom_steps` − 1 products: TorchDEQ's phantom gradient with τ = 1), `jfb` (one
            step) or `unroll` (autograd through the iterations). See models.fpi.
        phantom_steps: k of the `phantom` backward (k = 1 is `jfb`).
        solver: the FPI layers' forward solver, `fixed_point` or `anderson` (Anderson
            acceleration, per sample); `deq` uses `deq_solver` instead.
        contraction: bound on the state path's operator norm, in (0, 1); None leaves the state
            path unconstrained (convergence is then not guaranteed).
        contraction_bound: how the state path's norm is bounded to enforce `contraction`:
            `circular` (the exact norm of the circular convolution embedding the zero-padded
            one; tight) or `taps` (Σ over kernel taps of σ_max; about 3× loose, so the real
            contraction is far below `contraction`). See models.contraction.
        state_path: the image layers' state path form: `conv` (a contractive 3×3 conv, an L2
            contraction) or `max` (on layer 1 the maximum over the 4 neighbours of a contractive
            1×1 channel mix, an L∞ contraction: a flood fill that carries a signal c^D over D
            cells where the conv's shrinks like (c/4)^D; layers 2, 3 keep the conv) or `flood`
            (the same spread combined with the injection by a maximum, so a flood settles in as
            many iterations as the cells it crosses). Sequence backbones take `conv` only. See
            models.contraction.ContractiveMaxSpread and ContractiveFlood.
        alpha, beta, gamma: reward R = α·correct − β·cost(a); loss = CE + γ·policy term.
        reward_cost: cost(a) in the reward. `depth` (the thesis): C(a)·k(a), C the action's
            FLOPs over the plain pass', k its number of FPI layers, so a FLOP spent on action 3
            costs three times one spent on action 1. `flops`: C(a) − 1, the extra compute over
            the plain pass; then E[R] = α·accuracy − β·FLOPs/plain, the Lagrangian of "best
            accuracy at a FLOP budget", which the operating curve and the confidence router are
            judged by.
        reward_hit: "correct" in the reward: `correct` (1/0, the thesis) or `probability` (the
            softmax probability of the true class: the same quantity in expectation over a
            calibrated model, but graded, so one sample says how much an action helped, not only
            whether it flipped the prediction).
        entropy: weight of the policy's entropy bonus, in reward units (keeps the agent
            exploring; see models.agent).
        baseline: REINFORCE baseline, `ema` (moving average of the batch-mean reward),
            `batch` (the current batch mean) or `plain` (self-critical: the reward the plain
            pass earned on the same sample).
        agent_hidden: hidden units of the AgentNet MLP.
        agent_confidence: also feed the agent the logarithms of the plain pass' 4 largest
            softmax probabilities, sorted (mean over tokens for language models), beside the
            pooled activations' LayerNorm rather than inside it: the plain prediction's
            confidence, which the pooled activations hold only through the head's softmax.
        agent_activations: the agent reads the pooled activations of L1..L3. False: it reads
            only the confidence features (needs `agent_confidence`), which on Fashion-MNIST
            rank the samples FPI fixes as well as the activations do and overfit less.
        agent_epochs: after the last epoch, the network frozen, the agent alone is trained for
            this many passes over the training split on the exact expected reward (every
            action's outcome computed once per sample; models.training.fit_agent). Jointly the
            agent gets only the few epochs after warm-up, on a network still moving; 0: none.
        path_loss: DynaLay's training objective for the main model. `routed`: CE on the logits
            of the action each sample took (the plain logits or its FPI recomputation).
            `every`: every training sample also runs every FPI path (actions 1..3 share their
            solves, so this costs about one action-3 recomputation), and the CE is the mean over
            the four paths' logits: the plain pass stays a good cheap exit and every FPI path a
            trained expensive one, whatever the agent currently routes.
        policy_gradient: how the agent learns. `reinforce`: the score-function estimate on the
            sampled action, with `baseline`. `expected`: the exact gradient of the expected
            reward Σ_a π(a|x)·R(x, a), from every action's reward: training then runs every
            path for every sample (as `path_loss: every` does; with `routed` the CE still
            takes only the sampled action's logits); no sampling noise, no baseline needed.
        route_bias: added to the agent's logit of action 0 (plain) when it takes its argmax at
            evaluation: > 0 routes fewer samples to FPI, < 0 more. Sweeping it traces the
            model's accuracy-compute operating curve without retraining
            (models.routing.operating_curve); training ignores it.
        deq_solver: TorchDEQ forward solver for `deq`, `anderson` or `broyden`.
        embed_dim, hidden: embedding and LSTM sizes of the sequence backbone.
    """

    kind: str = "dynalay"
    width: int = 32
    fwd_tol: float = 1e-5
    bwd_tol: float = 1e-5
    max_iter: int = 30
    backward: str = "implicit"
    phantom_steps: int = 3
    solver: str = "fixed_point"
    contraction: float | None = 0.9
    contraction_bound: str = "circular"
    state_path: str = "conv"
    alpha: float = 0.5
    beta: float = 0.3
    reward_cost: str = "depth"
    reward_hit: str = "correct"
    gamma: float = 0.2
    entropy: float = 0.05
    baseline: str = "ema"
    agent_hidden: int = 64
    agent_confidence: bool = False
    agent_activations: bool = True
    agent_epochs: int = 0
    path_loss: str = "routed"
    policy_gradient: str = "reinforce"
    route_bias: float = 0.0
    deq_solver: str = "anderson"
    embed_dim: int = 64
    hidden: int = 128

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, MODEL_KINDS)
        _check_choice("backward", self.backward, BACKWARD_MODES)
        _check_choice("solver", self.solver, FPI_SOLVERS)
        _check_choice("deq_solver", self.deq_solver, DEQ_SOLVERS)
        _check_choice("baseline", self.baseline, BASELINES)
        _check_choice("contraction_bound", self.contraction_bound, CONTRACTION_BOUNDS)
        _check_choice("state_path", self.state_path, STATE_PATHS)
        _check_choice("path_loss", self.path_loss, PATH_LOSSES)
        _check_choice("policy_gradient", self.policy_gradient, POLICY_GRADIENTS)
        _check_choice("reward_cost", self.reward_cost, REWARD_COSTS)
        _check_choice("reward_hit", self.reward_hit, REWARD_HITS)
        if not (self.agent_activations or self.agent_confidence):
            raise ValueError("agent_activations=False needs agent_confidence=True: the agent reads nothing")
        if not isinstance(self.agent_epochs, int) or self.agent_epochs < 0:
            raise ValueError(f"agent_epochs={self.agent_epochs!r} must be an integer >= 0")
        if not math.isfinite(self.route_bias):
            raise ValueError(f"route_bias={self.route_bias!r} must be finite")
        for name in ("width", "max_iter", "phantom_steps", "agent_hidden", "embed_dim", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name in ("fwd_tol", "bwd_tol"):
            _check_positive(name, getattr(self, name))
        for name in ("alpha", "beta", "gamma", "entropy"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if self.contraction is not None and not 0 < self.contraction < 1:
            raise ValueError(f"contraction={self.contraction!r} must lie in (0, 1) or be None")


@dataclass(frozen=True)
class TrainConfig(_DictConfig):
    """How `models.training.fit` trains.

    Attributes:
        epochs: total epochs, warm-up included.
        warmup_epochs: leading epochs that pre-train the main model only (DynaLay samples
            its actions uniformly and the agent is not trained); ignored by the baselines.
        lr, weight_decay: Adam's settings.
        batch_size: samples per optimiser step.
        seed: seeds the batch order, the action sampling and the parameter-free randomness.
        amp: bf16 autocast when training on CUDA (never on CPU).
    """

    epochs: int = 10
    warmup_epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={self.warmup_epochs!r} must be an integer >= 0")
        _check_positive("lr", self.lr)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")


@dataclass(frozen=True)
class ModelSpec:
    """The data a model is built for.

    Attributes:
        task: `image` (x: float B×C×H×W), `sequence` (x: int64 B×T token ids, one label per
            sequence) or `language_model` (x and y: int64 B×T, y the next tokens).
        input_shape: one sample's shape, `(C, H, W)` or `(T,)`.
        num_classes: classes (for `language_model`, the vocabulary size).
        vocab_size: token vocabulary of the sequence tasks.
    """

    task: str
    input_shape: tuple[int, ...]
    num_classes: int
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        _check_choice("task", self.task, TASKS)
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if self.task == "image" and len(self.input_shape) != 3:
            raise ValueError(f"image input_shape must be (C, H, W), got {self.input_shape}")
        if self.task != "image":
            if len(self.input_shape) != 1:
                raise ValueError(f"{self.task} input_shape must be (T,), got {self.input_shape}")
            if self.vocab_size is None or self.vocab_size < 2:
                raise ValueError(f"{self.task} needs vocab_size >= 2, got {self.vocab_size}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes} must be >= 2")


@dataclass(frozen=True)
class TensorPair:
    """One split: inputs `x` and targets `y`, CPU tensors with the sample on dimension 0."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} samples but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.x.shape[0])
