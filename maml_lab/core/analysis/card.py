"""Evaluation cards: the protocol of an evaluation stated next to its numbers (Qt-free).

A card says what an accuracy or MSE was measured under: the task family, how many held-out tasks, ways, shots
and queries, how many test-time steps of which inner optimizer and step size, how batch norm treats a task's
queries (the batch-norm mode: transductive, the support set's statistics, each query with the support set, or
running statistics; core/models/batch_norm.py), the loss convention (the lab's per-task mean or
cbfinn/maml's sum / K), the confidence-interval formula, and whether all of this is the protocol of a named
paper (which fields differ, and how). CLI `eval`, the Adaptation and Tasks views, the benchmark scripts and their
CSV/JSON exports print or embed one (`text()`, `to_dict()`).

Paper protocols (GUIDE.md section 1, and the reference code where the paper is silent):

* MAML paper (Finn et al. 2017), Omniglot 5-way: 600 tasks, 3 test steps of SGD with alpha 0.4 on cbfinn's
  cross-entropy sum / K (2.0 on a per-task mean), batch norm with batch statistics (no scale, eps 1e-3), K
  queries per class (cbfinn's data generator draws 2K images per class), 95% CI = 1.96 std / sqrt(600).
  20-way: 5 steps of alpha 0.1.
* MAML paper, sinusoid (Appendix C): 600 tasks, K = 5 (and 10) points, 1 / 5 / 10 SGD steps of 0.01 on the
  per-task MSE, no batch norm, 95% CI = 1.96 std / sqrt(600).
* Reptile paper (Nichol et al. 2018), sine demo: K = 10 points, 32 SGD steps of 0.02 (MLP 1-64-64-1).
* Reptile paper (Nichol et al. 2018), Omniglot 5-way: 50 test-time Adam iterations (beta1 0, lr 1e-3),
  transductive batch norm for the reported numbers, 10,000 tasks (supervised-reptile's evaluate()).
* MAML paper, 2-D navigation (Figure 5; cbfinn/maml_rl's test_maml_point.py): 40 goals from np.random.seed(1),
  about 40 trajectories per step, SGD 0.5 then 0.25. Navigation's card is printed by core/rl/protocol.py
  (`eval --protocol lab|paper`: goals, trajectories per step, step sizes, the pretrained baseline's tuned step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

CI_FORMULA = "95% CI = 1.96 std / sqrt(tasks)"


@dataclass(frozen=True)
class PaperProtocol:
    """A named paper's evaluation protocol; None fields are not stated by it (not compared)."""

    key: str
    title: str
    tasks: int | None = None
    ways: int | None = None
    shots: tuple[int, ...] | None = None
    queries: str | None = None  # "K" (as many as shots) or a number as text
    steps: tuple[int, ...] | None = None
    optimizer: str | None = None  # "SGD" or "Adam"
    step_size: float | None = None  # on the per-task mean loss (cbfinn's 0.4 on sum / K is 2.0 here for 5 ways)
    paper_step_size: str | None = None  # as the paper states it
    convention: str | None = None  # "lab" or "cbfinn"
    transductive: bool | None = None
    ci: str | None = CI_FORMULA
    adapts: str = "all"  # which parameters its test-time rule moves: all, or the head (a head fit on a frozen body)


PROTOCOLS = {
    "maml-omniglot-5way": PaperProtocol(
        "maml-omniglot-5way", "MAML paper, Omniglot 5-way (Finn et al. 2017)", tasks=600, ways=5, shots=(1, 5),
        queries="K", steps=(3,), optimizer="SGD", step_size=0.4 * 5, paper_step_size="0.4 on sum / K",
        convention="cbfinn", transductive=True),
    "maml-omniglot-20way": PaperProtocol(
        "maml-omniglot-20way", "MAML paper, Omniglot 20-way (Finn et al. 2017)", tasks=600, ways=20, shots=(1, 5),
        queries="K", steps=(5,), optimizer="SGD", step_size=0.1 * 20, paper_step_size="0.1 on sum / K",
        convention="cbfinn", transductive=True),
    "maml-sinusoid": PaperProtocol(
        "maml-sinusoid", "MAML paper, sinusoid regression (Finn et al. 2017, Appendix C)", tasks=600,
        shots=(5, 10), steps=(1, 5, 10), optimizer="SGD", step_size=0.01, paper_step_size="0.01",
        convention="lab"),
    "reptile-omniglot-5way": PaperProtocol(
        "reptile-omniglot-5way", "Reptile paper, Omniglot 5-way (Nichol et al. 2018)", tasks=10000, ways=5,
        shots=(1, 5), steps=(50,), optimizer="Adam", step_size=1e-3, paper_step_size="Adam 1e-3, beta1 0",
        transductive=True, ci=None),
    "reptile-sinusoid": PaperProtocol(
        "reptile-sinusoid", "Reptile paper, sine demo (Nichol et al. 2018)", shots=(10,), steps=(32,),
        optimizer="SGD", step_size=0.02, paper_step_size="0.02", convention="lab", ci=None),
    # wyharveychen/CloserLookFewShot test.py: 600 tasks, 15 queries per class; baselinefinetune.py: 100 epochs of
    # SGD 0.01 on a new head over features extracted in eval mode (batch norm's running statistics: not transductive)
    "closerlook-omniglot-5way": PaperProtocol(
        "closerlook-omniglot-5way", "Closer Look paper, Omniglot 5-way (Chen et al. 2019)",
        tasks=600, ways=5, shots=(1, 5), queries="15", steps=(100,), optimizer="SGD", step_size=0.01,
        paper_step_size="0.01", transductive=False, adapts="head"),
}
CLOSER_LOOK = ("baseline", "baselinepp")  # the algorithms held against Chen et al.'s protocol


def paper_protocol(family: str, algorithm: str | None, ways: int | None) -> PaperProtocol | None:
    """The named paper protocol an evaluation is held against: Reptile's for Reptile on images, Chen et al.'s for
    Baseline and Baseline++, the MAML paper's otherwise (Omniglot 5- or 20-way, sinusoid); None where no paper
    states one (e.g. 10-way)."""
    if family == "sinusoid":
        return PROTOCOLS["reptile-sinusoid" if algorithm == "reptile" else "maml-sinusoid"]
    if family == "images":
        if algorithm in CLOSER_LOOK:
            return PROTOCOLS["closerlook-omniglot-5way"] if ways == 5 else None
        if algorithm == "reptile":
            return PROTOCOLS["reptile-omniglot-5way"] if ways == 5 else None
        return {5: PROTOCOLS["maml-omniglot-5way"], 20: PROTOCOLS["maml-omniglot-20way"]}.get(ways)
    return None


def _num(v: float) -> str:
    return f"{v:g}"


def _join(values) -> str:
    values = list(values)
    return ", ".join(str(v) for v in values[:-1]) + (" or " if len(values) > 1 else "") + str(values[-1])


def _adapted_subset(algorithm: str | None) -> str:
    """'all', 'head' or 'body': the parameters a registered algorithm's inner loop moves (unknown: all)."""
    if not algorithm:
        return "all"
    from ..algorithms.registry import algorithm_class

    try:
        return str(getattr(algorithm_class(algorithm), "adapts", "all") or "all")
    except (KeyError, ValueError):
        return "all"


@dataclass
class EvaluationCard:
    """The protocol of one evaluation. Build it with `EvaluationCard.build`; `text()` for people, `to_dict()`
    for JSON/CSV."""

    task_family: str
    tasks: int
    shots: list[int]
    steps: list[int]
    queries: int | None  # per class (classification) or points per task (regression)
    ways: int | None = None
    algorithm: str | None = None
    inner_optimizer: str = ""  # adaptation_text: 'SGD, inner lr 0.4', 'Adam (beta1 0, ...), inner lr 0.001'
    step_size: float | None = None
    convention: str = "lab"
    loss: str = ""  # the loss convention in words
    batch_norm: str = "none (no batch norm)"
    transductive: bool | None = None  # None: no batch norm
    # the batch-norm mode of the predictions (core/models/batch_norm.py): transductive, support, support+query,
    # running; None: no batch norm
    batch_norm_mode: str | None = None
    adapts: str = "all"  # which parameters the inner loop moves: all, head (ANIL) or body (BOIL)
    ci: str = CI_FORMULA
    paper: str | None = None  # the named protocol's title (None: no paper states one for this setting)
    paper_key: str | None = None
    matches_paper: bool | None = None
    differences: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # data, split, seed, ...
    # `eval --probe`: the linear probe's rule, whose rows are printed beside the evaluation's (None: no probe)
    probe: str | None = None

    # -- construction ---------------------------------------------------------------------------------------

    @classmethod
    def build(cls, task_family: str, tasks: int, shots, steps, adaptation, *, queries: int | None = None,
              ways: int | None = None, loss: str | None = None, model=None, algorithm: str | None = None,
              transductive: bool | None = None, batch_norm=None, notes: dict | None = None) -> "EvaluationCard":
        """A card for `tasks` held-out tasks of `task_family` fine-tuned `steps` steps by `adaptation` (an
        AlgorithmConfig, LearnedAdaptation or an SGD step size), with `model` (its batch norm and convention) and
        the loss name the adaptation minimizes (tasks.losses). `batch_norm`: the predictions' batch-norm mode (a
        mode name or PopulationStatistics; None: the algorithm's own, `default_batch_norm`)."""
        from ..algorithms.config import adaptation_config, adaptation_text, default_batch_norm
        from ..models.batch_norm import PopulationStatistics, mode_name
        from ..tasks.losses import loss_text

        config = adaptation_config(adaptation)
        if algorithm is None and config is not None:
            algorithm = config.name
        text = adaptation_text(adaptation)
        step_size = float(config.inner_lr) if config is not None else (
            float(adaptation) if isinstance(adaptation, (int, float)) else None)
        if _optimizer_kind(text) not in ("SGD", "Adam"):
            step_size = None  # learned step sizes (Meta-SGD, MAML++): the text says so
        elif loss == "policy_gradient" and step_size is not None:  # sampled tasks: rl.objective.test_schedule
            from ..rl.objective import test_schedule_text

            text = test_schedule_text(step_size).replace("SGD ", "SGD, inner lr ", 1)
        spec = model.spec() if hasattr(model, "spec") else dict(model or {})
        convention = spec.get("convention", "lab") if spec.get("kind") == "conv4" else (
            "cbfinn" if loss == "cross_entropy_sum" else "lab")
        mode = None
        if spec.get("kind") == "conv4":
            if batch_norm is None and transductive is not None:
                batch_norm = "transductive" if transductive else "support+query"
            mode = mode_name(batch_norm if batch_norm is not None else default_batch_norm(adaptation))
            transductive = mode == "transductive"
        card = cls(task_family=task_family, tasks=int(tasks), shots=sorted({int(s) for s in _list(shots)}),
                   steps=sorted({int(s) for s in _list(steps)}), queries=None if queries is None else int(queries),
                   ways=None if ways is None else int(ways), algorithm=algorithm,
                   inner_optimizer=text, step_size=step_size, convention=convention,
                   loss=loss_text(loss) if loss else "", transductive=transductive, batch_norm_mode=mode,
                   notes=dict(notes or {}))
        if spec.get("kind") == "conv4":
            card.batch_norm = _batch_norm_text(convention, mode, _inner_loop_steps_batch_norm(algorithm))
            if isinstance(batch_norm, PopulationStatistics) and batch_norm.source:
                card.notes.setdefault("running_statistics", batch_norm.source)
        card.adapts = _adapted_subset(algorithm)
        card.compare(paper_protocol(task_family, algorithm, card.ways))
        return card

    def compare(self, protocol: PaperProtocol | None) -> None:
        """Fill paper / matches_paper / differences against `protocol`."""
        self.differences = []
        if protocol is None:
            self.paper, self.paper_key, self.matches_paper = None, None, None
            return
        self.paper, self.paper_key = protocol.title, protocol.key
        d = self.differences
        if protocol.tasks is not None and self.tasks != protocol.tasks:
            d.append(f"tasks {self.tasks} (paper: {protocol.tasks})")
        if protocol.ways is not None and self.ways != protocol.ways:
            d.append(f"ways {self.ways} (paper: {protocol.ways})")
        if protocol.shots is not None and not set(self.shots) <= set(protocol.shots):
            d.append(f"shots {_join(self.shots)} (paper: {_join(protocol.shots)})")
        if protocol.queries == "K":
            if self.queries is not None and self.shots and any(self.queries != s for s in self.shots):
                d.append(f"{self.queries} queries per class (paper's code: K, as many as the shots)")
        elif protocol.queries is not None and self.queries is not None and str(self.queries) != protocol.queries:
            d.append(f"{self.queries} queries per class (paper: {protocol.queries})")
        if protocol.steps is not None and not set(self.steps) & set(protocol.steps):
            d.append(f"steps {_steps_text(self.steps)} (paper: {_join(protocol.steps)})")
        optimizer = _optimizer_kind(self.inner_optimizer)
        if protocol.optimizer is not None and optimizer and optimizer != protocol.optimizer:
            d.append(f"inner optimizer: {optimizer} (paper: {protocol.optimizer})")
        effective = self.effective_step_size
        if (protocol.step_size is not None and effective is not None
                and abs(effective - protocol.step_size) > 1e-9 * max(1.0, protocol.step_size)):
            here = f"{_num(self.step_size)}" + (" on sum / K" if self.convention == "cbfinn" else "")
            d.append(f"step size {here} = {_num(effective)} on the per-task mean loss (paper: "
                     f"{protocol.paper_step_size} = {_num(protocol.step_size)})")
        if protocol.convention is not None and self.convention != protocol.convention:
            d.append(f"{self.convention} loss and batch-norm conventions (paper's code: {protocol.convention})")
        if protocol.transductive is not None and self.transductive is not None \
                and self.transductive != protocol.transductive:
            d.append(f"batch norm {self.batch_norm_mode if not self.transductive else 'transductive'} (paper: "
                     f"{'transductive' if protocol.transductive else 'not transductive'})")
        if self.adapts != protocol.adapts:
            d.append(f"the inner loop adapts the {self.adapts} only (paper: every parameter)" if protocol.adapts ==
                     "all" else f"the test-time rule adapts {self.adapts} (paper: the {protocol.adapts} only)")
        if protocol.ci is not None and self.ci != protocol.ci:
            d.append(f"CI {self.ci} (paper: {protocol.ci})")
        self.matches_paper = not d

    # -- reading ----------------------------------------------------------------------------------------------

    @property
    def effective_step_size(self) -> float | None:
        """The step size on the per-task mean loss: cbfinn's sum / K is `ways` times that mean."""
        if self.step_size is None:
            return None
        return self.step_size * (self.ways or 1) if self.convention == "cbfinn" else self.step_size

    def what(self) -> str:
        shots = "/".join(str(s) for s in self.shots)
        if self.loss == "policy_gradient":  # sampled tasks: each step's cost is measured on its own trajectories
            return f"{self.task_family}, {self.tasks} held-out goals, {shots} trajectories per step"
        head = f"{self.ways}-way {shots}-shot" if self.ways else f"K = {shots}"
        noun = ("query" if self.queries == 1 else "queries") if self.ways else (
            "query point" if self.queries == 1 else "query points")
        per = " per class" if self.ways else ""
        queries = f", {self.queries} {noun}{per}" if self.queries is not None else ""
        return f"{head} {self.task_family}, {self.tasks} held-out tasks{queries}"

    def text(self) -> str:
        """A few lines, printed above the numbers."""
        steps = _steps_text(self.steps)
        adaptation = (self.inner_optimizer if self.steps == [0] and _adaptation_kind(self.algorithm) != "gradient"
                      else f"{steps} step{'s' if self.steps != [1] else ''} of {self.inner_optimizer}")
        lines = [f"evaluation card: {self.what()}" + (f"; {self.algorithm}" if self.algorithm else ""),
                 f"  adaptation: {adaptation}",
                 f"  conventions: {self.convention}; loss {self.loss or 'n/a'}",
                 f"  batch norm: {self.batch_norm}",
                 f"  {self.ci}"]
        if self.probe:
            lines.append(f"  linear probe beside it, on the same tasks: {self.probe}")
        if self.paper is None:
            lines.append("  paper protocol: none stated for this setting")
        elif self.matches_paper:
            lines.append(f"  matches the protocol of the {self.paper}")
        else:
            lines.append(f"  differs from the {self.paper} in: " + "; ".join(self.differences))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["effective_step_size"] = self.effective_step_size
        d["text"] = self.text()
        return d

    def csv_comments(self) -> list[str]:
        """The card as '# ' comment lines for the top of a CSV file."""
        return [f"# {line}" for line in self.text().splitlines()]


def _optimizer_kind(text: str) -> str:
    """'SGD' or 'Adam' from an adaptation text ('SGD, inner lr 0.4', 'Adam (beta1 0, ...), ...'); else the text up
    to its first parenthesis or comma (learned step sizes and the like)."""
    head = (text or "").split(",")[0].split("(")[0].strip()
    for kind in ("SGD", "Adam"):
        if head.split(" ")[0].lower() == kind.lower():
            return kind
    return head


def _steps_text(steps) -> str:
    """'3', '1, 5, 10', or '0 to 10' for a run of consecutive counts."""
    steps = list(steps)
    if len(steps) > 3 and steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]} to {steps[-1]}"
    return ", ".join(str(s) for s in steps)


def _list(values) -> list:
    if values is None:
        return []
    return list(values) if isinstance(values, (list, tuple, set)) else [values]


def _adaptation_kind(algorithm: str | None) -> str:
    """A registered algorithm's `adaptation_kind` ("gradient" for unknown names): a rule without steps (ProtoNets'
    prototypes) is stated as such, not as '0 steps of' it."""
    from ..algorithms.registry import ALGORITHMS

    if not algorithm or algorithm not in ALGORITHMS.names():
        return "gradient"
    return str(getattr(ALGORITHMS.get(algorithm), "adaptation_kind", "gradient"))


def _inner_loop_steps_batch_norm(algorithm: str | None) -> bool:
    """Whether `algorithm`'s inner loop steps batch norm's scale and shift (unknown names: as MAML does)."""
    from ..algorithms.registry import ALGORITHMS

    if not algorithm or algorithm not in ALGORITHMS.names():
        return True
    cls = ALGORITHMS.get(algorithm)
    if cls.adapts_batch_norm is not None:
        return bool(cls.adapts_batch_norm)
    return cls.adapts != "head"


def _batch_norm_text(convention: str, mode: str, inner_loop: bool = True) -> str:
    """The predictions' batch-norm mode in words (adaptation always normalizes the support set with its own batch
    statistics), then batch norm's form under the convention."""
    from ..models.batch_norm import MODE_TEXT

    mode = MODE_TEXT[mode]
    if convention == "cbfinn":
        form = "no scale, eps 1e-3, shift not adapted in the inner loop"
    else:
        form = "scale and shift, eps 1e-5, " + ("both adapted" if inner_loop else "neither adapted in the inner loop")
    return f"{mode}; {form}"


def validation_cards(config) -> dict:
    """The protocol of a run's validation (the val_* metrics: `config.val_tasks` fresh tasks, held-out classes for
    image sets, each algorithm's training inner steps and test-time rule): {algorithm: EvaluationCard}."""
    images = config.task == "images"
    convention = config.task_option("convention") if images else "lab"
    if images:
        loss, spec = ("cross_entropy_sum" if convention == "cbfinn" else "cross_entropy"), {
            "kind": "conv4", "convention": convention}
    elif config.task == "sinusoid":
        loss, spec = "mse", {"kind": "mlp"}
    else:
        from ..tasks.registry import task_family

        loss, spec = task_family(config.task).loss, {}
    return {a.name: EvaluationCard.build(config.task, max(config.val_tasks, 1), [config.shots],
                                         [max(a.inner_steps, 1)], a, queries=config.queries,
                                         ways=config.ways if images else None, loss=loss, model=spec,
                                         algorithm=a.name, notes={"what": "validation during training"})
            for a in config.algorithms}
