"""What a study asks, as one typed value: `featx study`'s options, a study file (`--config study.toml`) and
the `study.toml` every study writes back into its folder, so that it can be re-run exactly.

Only this module reads or writes a study file. Names are checked here, before any work: an unknown
backbone, head or fine-tune option is refused in one line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .._core.errors import FeatxError
from .._core.options import check_choice, check_number
from .._core.tracking import check_tracking
from ..evaluation.thresholds import parse_threshold
from ..finetuning.config import FinetuneConfig
from ..heads.adaptation import ADAPTATIONS
from ..heads.specs import head_names
from ..labelling.strategies import STRATEGIES
from ..models.registry import get_spec
from .execution import Resources, check_executor

DEFAULT_SIZES = (25, 50, 100, 250, 500, 1000, "all")
# What a study may set on its fine-tunes: finetune's own options, less those the study sets (the backbone,
# weights and seed) or that would break its budgets (a head from another fit, a subset of the budget).
FINETUNE_OPTIONS = tuple(f.name for f in fields(FinetuneConfig)
                         if f.name not in ("backbone", "weights", "seed", "init_head_from", "limit_train"))


@dataclass(frozen=True)
class StudySpec:
    """One study: which methods, at which label budgets, evaluated where."""

    data: str
    backbones: tuple[str, ...] = ("efficientnet_lite0",)
    heads: tuple[str, ...] = ("logreg",)
    finetune: tuple[str, ...] = ()
    train_sizes: tuple | None = None  # None: DEFAULT_SIZES below the pool's size, then "all"
    finetune_sizes: tuple | None = None  # the sizes fine-tuned (a costly method may stop earlier); None: all
    repeats: int = 3
    eval_split: str | None = None
    val_fraction: float | None = None
    group_pattern: str | None = None  # the regex naming an image's patient (None: the dataset's stored or default)
    weights: str = "imagenet"
    seed: int = 0
    threshold: str | float = 0.5
    n_boot: int = 1000
    finetune_options: dict = field(default_factory=dict)
    # name -> fine-tune options over finetune_options: one fine-tune method per recipe (e.g. {"default": {},
    # "ema": {"ema": 0.999}}); none: the one recipe finetune_options makes
    finetune_recipes: dict = field(default_factory=dict)
    # how each curve's training labels are chosen: "random" (the budgets of data.budgets) and labelling
    # strategies (labelling.strategies), each its own curve on every method
    strategies: tuple[str, ...] = ("random",)
    exclude: str | None = None  # train images never trained on (featx audit's flags): a second curve, "flagged removed"
    # images of the site where the model will be used (folder or manifest): never trained on; the shift to it is
    # measured per backbone, labelled ones score every unit, and `adapt` adds heads adapted to its unlabelled features
    target: str | None = None
    target_group_pattern: str | None = None
    adapt: tuple[str, ...] = ()
    target_sizes: tuple[int, ...] | None = None  # site labels per transfer curve point (studies.site_transfer)
    precision: str = "auto"  # of the extracted features (extract --precision): bf16 is a cache of its own
    # where the units run (studies.execution), never part of what a unit is: any executor saves the same records
    executor: str = "local"
    jobs: int = 1  # local worker processes
    resources: Resources = field(default_factory=Resources)  # a study file's [resources] table
    ray_address: str | None = None
    track: str | None = None  # "mlflow": every unit logged as a run (reporting.tracking)
    tracking_uri: str | None = None  # None: sqlite in the study folder

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("data", str(self.data))
        set_("backbones", _names(self.backbones))
        set_("finetune", _names(self.finetune))
        set_("strategies", _names(self.strategies) or ("random",))
        for name in self.strategies:
            if name not in STRATEGIES:
                raise FeatxError(f"--strategies: {name!r} is not a strategy; choose among {', '.join(STRATEGIES)}")
        if set(self.finetune) - set(self.backbones) and self.strategies != ("random",):
            missing = sorted(set(self.finetune) - set(self.backbones))[0]
            raise FeatxError(f"--strategies choose a fine-tune's images on its own backbone's frozen features: add "
                             f"{missing} to --backbones")
        if self.exclude is not None:
            set_("exclude", str(self.exclude))
        self._check_target(set_)
        heads = _names(self.heads)
        set_("heads", tuple(dict.fromkeys(name for head in heads for name in head_names(head))))
        if "prior" in self.adapt and "logreg" not in self.heads:
            raise FeatxError("--adapt prior re-weights the classes of a logreg head: add logreg to --heads")
        if not (self.backbones and self.heads) and not self.finetune:
            raise FeatxError("a study needs a backbone and a head, or a fine-tune (--finetune BACKBONE)")
        for backbone in {*self.backbones, *self.finetune}:
            get_spec(backbone, check_timm=False)
        for name, (integer, low, high, optional) in _NUMBERS.items():
            check_number(_FLAGS.get(name, name), getattr(self, name), integer=integer, low=low, high=high, open_low=not integer,
                         open_high=not integer, optional=optional)
        set_("threshold", parse_threshold(self.threshold))
        check_choice("precision", self.precision)
        set_("resources", Resources.of(self.resources))
        check_executor(self.executor, self.jobs, self.resources, self.ray_address)
        check_tracking(self.track, self.tracking_uri)
        if self.eval_split not in (None, "test", "val"):
            raise FeatxError(f"--eval-split must be test or val, not {self.eval_split!r}")
        if not isinstance(self.weights, str):
            raise FeatxError(f"--weights takes imagenet, random or a path, not {self.weights!r}")
        if self.train_sizes is not None:
            set_("train_sizes", tuple(_size(s) for s in _sizes(self.train_sizes)))
        if self.finetune_sizes is not None:
            set_("finetune_sizes", tuple(_size(s) for s in _sizes(self.finetune_sizes)))
            extra = [s for s in self.finetune_sizes if s not in (self.train_sizes or DEFAULT_SIZES)]
            if extra:
                raise FeatxError(f"--finetune-sizes {extra[0]} is not one of --train-sizes "
                                 f"({', '.join(map(str, self.train_sizes or DEFAULT_SIZES))})")
        set_("finetune_options", _options(self.finetune_options, "the study"))
        recipes = {}
        for name, options in dict(self.finetune_recipes).items():
            if not _RECIPE_NAME.fullmatch(str(name)):
                raise FeatxError(f"fine-tune recipe name {name!r}: use letters, digits, - and _")
            if not isinstance(options, dict):
                raise FeatxError(f"finetune_recipes.{name} must be a table of fine-tune options, not {options!r}")
            recipes[str(name)] = _options(options, f"recipe {name!r}")
        set_("finetune_recipes", recipes)


    def _check_target(self, set_) -> None:
        """The target site's options: names of adaptations and sizes, each needing --target."""
        if self.target is not None:
            set_("target", str(self.target))
        set_("adapt", _names(self.adapt))
        for name in self.adapt:
            if name not in ADAPTATIONS or name == "none":
                raise FeatxError(f"--adapt: {name!r} is not an adaptation; choose among "
                                 f"{', '.join(a for a in ADAPTATIONS if a != 'none')}")
        if self.target_sizes is not None:
            wrong = FeatxError("--target-sizes takes numbers of site labels of 2 or more, e.g. 10,20,40")
            try:
                sizes = tuple(_size(s) for s in _sizes(self.target_sizes))
            except FeatxError:
                raise wrong from None
            if "all" in sizes or any(s < 2 for s in sizes):
                raise wrong
            set_("target_sizes", tuple(sorted(set(sizes))))
            if self.target is None:
                raise FeatxError("--target-sizes draws labelled images of a target site: give it with --target DIR|CSV")
        if self.adapt and self.target is None:
            raise FeatxError("--adapt adapts heads to a target site's images: give them with --target DIR|CSV")

    @classmethod
    def from_toml(cls, path, **overrides) -> "StudySpec":
        """A study file, with `overrides` (the options given on the command line) on top."""
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FeatxError(f"study file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise FeatxError(f"{path} is not a valid TOML study file: {exc}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FeatxError(f"{path}: unknown study key {unknown[0]!r}; the keys are {', '.join(sorted(known))}")
        values = {**values, **overrides}
        if "data" not in values:
            raise FeatxError(f"{path} names no data (data = \"DIR\"), and --data was not given")
        for key in ("data", "exclude", "target"):  # relative to the study file, as written back
            if values.get(key) and not Path(values[key]).is_absolute() and key not in overrides:
                values[key] = str((path.parent / values[key]).resolve())
        return cls(**values)

    def to_toml(self, relative_to: Path | None = None) -> str:
        """The study as a TOML file: `featx study --config` on it runs this same study."""
        values = asdict(self)
        if relative_to is not None:
            values["data"] = _relative(Path(self.data), relative_to)
            for key in ("exclude", "target"):
                if values.get(key):
                    values[key] = _relative(Path(values[key]), relative_to)
        lines = ["# featx study: re-run with  featx study --config study.toml"]
        options, recipes = values.pop("finetune_options"), values.pop("finetune_recipes")
        values.pop("resources")
        resources = self.resources.given()
        lines += [f"{key} = {_toml(value)}" for key, value in values.items() if value is not None]
        if resources:
            lines += ["", "[resources]", *[f"{key} = {_toml(value)}" for key, value in resources.items()]]
        if options:
            lines += ["", "[finetune_options]", *[f"{key} = {_toml(value)}" for key, value in options.items()]]
        for name, recipe in recipes.items():
            lines += ["", f"[finetune_recipes.{name}]", *[f"{key} = {_toml(value)}" for key, value in recipe.items()]]
        return "\n".join(lines) + "\n"

    def recipes(self) -> dict[str | None, dict]:
        """Each fine-tune recipe's name (None: the study's only one, unnamed) and its whole options."""
        if not self.finetune_recipes:
            return {None: dict(self.finetune_options)}
        return {name: dict(sorted({**self.finetune_options, **options}.items()))
                for name, options in self.finetune_recipes.items()}

    def sizes(self, pool: int) -> tuple:
        """The train sizes asked, or by default those of DEFAULT_SIZES below a pool of `pool` images and "all"."""
        if self.train_sizes is not None:
            return self.train_sizes
        return tuple(n for n in DEFAULT_SIZES if n == "all" or n < pool)

    @classmethod
    def asked(cls, data, config, values: dict, finetune_options: dict) -> StudySpec:
        """The study a command line asks: a study file's (`config`) with `values` and `finetune_options`
        over it, or, without a file, `data` and these values alone."""
        if config:
            if finetune_options:
                values = {**values, "finetune_options": {**cls.from_toml(config).finetune_options, **finetune_options}}
            if "resources" in values:  # the options given, over the file's table
                values = {**values, "resources": {**cls.from_toml(config).resources.given(), **values["resources"]}}
            return cls.from_toml(config, **({"data": data} if data else {}), **values)
        if not data:
            raise FeatxError("give --data DIR, or --config study.toml")
        return cls(data=data, finetune_options=finetune_options, **values)

    @property
    def record(self) -> dict:
        """What every unit's name is taken over, besides its own method and budget."""
        return {"seed": self.seed, "threshold": str(self.threshold), "n_boot": self.n_boot}


_RECIPE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _options(options: dict, where: str) -> dict:
    """Fine-tune options, sorted, every name one finetune takes and every value one it accepts (checked here
    by finetune's own declaration, before any work)."""
    if not isinstance(options, dict):
        raise FeatxError(f"the fine-tune options of {where} must be a table of options, not {options!r}")
    unknown = sorted(set(options) - set(FINETUNE_OPTIONS))
    if unknown:
        raise FeatxError(f"unknown fine-tune option {unknown[0]!r} in {where}: choose among "
                         f"{', '.join(FINETUNE_OPTIONS)}")
    try:
        FinetuneConfig(**options)
    except FeatxError as exc:
        raise FeatxError(f"{where}: {exc}") from None
    return dict(sorted(options.items()))


# Each numeric field: (whole number, low, high, may be None); bounds of whole numbers are inclusive, of
# fractions exclusive. The CLI, the API and a study file all pass through this one declaration.
_NUMBERS = {"repeats": (True, 1, None, False), "seed": (True, 0, None, False), "n_boot": (True, 100, None, False),
            "val_fraction": (False, 0, 1, True)}


_FLAGS = {"n_boot": "bootstrap"}  # a field whose command-line option has another name


def _sizes(value) -> list:
    """Train sizes from a list, or from text separated by commas ("25,50,all")."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _names(value) -> tuple[str, ...]:
    """Names from a list or a comma-separated text; "none" names none (a study of fine-tunes only)."""
    if value in (None, "none"):
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(dict.fromkeys(str(v).strip() for v in items if str(v).strip()))


def _size(size):
    if size in (None, "all"):
        return "all"
    if isinstance(size, str) and size.strip().isdigit() and int(size) > 0:
        return int(size)
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    raise FeatxError(f"--train-sizes takes positive numbers of images or 'all', not {size!r}")


def _relative(path: Path, folder: Path) -> str:
    import os

    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # another drive
        return str(path)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
