"""An architecture as plain, immutable data, with one text form and one JSON form.

Text form (the TF / automl block-string grammar, one string per stage, joined by commas, with
network-level tokens around them)::

    stem32,r1_k3_s1_e1_i32_o16_se0.25,r2_k3_s2_e6_i16_o24_se0.25,...,head1280,res224,drop0.2,sd0.2,act_silu

Stage grammar:
``r<repeats>_k<kernel>_s<stride>_e<expansion>_i<in>_o<out>[_se<ratio>][_fc<C>][_c<type>][_noskip|_poolskip]``

* ``c1`` marks a Fused-MBConv stage (``c0`` or no ``c`` token: MBConv), as in EfficientNetV2's configs.
* Strides may be written ``s2`` (V2) or ``s22`` (V1 / MnasNet); the canonical form is ``s2``.
* Kernels 3, 5 and 7 (MnasNet-D1); expansion 1 to 9 (MnasNet-D1's e9 is the largest published).
* ``i`` is optional on input. In the TF decoders it is *nominal*: the first block of a stage computes
  its expanded width (``i * e``) and its SE width (``i * se``) from it, whatever the previous stage
  really outputs. EfficientNet-EdgeTPU-S (``stem32`` then ``i24``), MnasNet-small and the scaled Lite
  networks rely on it. So an ``i`` that differs from the real input is accepted: when it changes
  those widths (expansion > 1 or SE) it is kept as ``fc<C>`` (timm's name for it, "force input
  channels"), otherwise it has no effect and is dropped. The canonical form always writes the real
  input as ``i`` (``i`` and ``fc`` together must agree). The residual follows the real channels,
  as in timm's ports.
* MnasNet's convolution kinds map onto the two block kinds: a regular kxk convolution is a
  Fused-MBConv with expansion 1 (``_c1`` ``_e1``), a depthwise-separable convolution is an MBConv
  with expansion 1.
* Network-level tokens (all optional on input, all written on output): ``stem<C>``, ``head<C>``,
  ``res<pixels>``, ``drop<p>`` (dropout before the classifier), ``sd<p>`` (stochastic depth, the rate
  of the last block), ``act_<silu|relu|relu6>``.
* Conventions of the implementation, written only when they differ from the default (so the text of
  an architecture that does not use them is unchanged): ``bneps<x>`` (BatchNorm epsilon, default
  1e-3 as in TensorFlow; torchvision's B0..B4, MobileNetV2, MnasNet and timm's non-``tf_`` models
  use 1e-5), ``bnmom<x>`` (BatchNorm momentum in PyTorch's sense, default 0.1; TensorFlow's decay
  0.99 is 0.01), ``pad_same`` (TensorFlow's "same" padding, asymmetric for stride 2, as in timm's
  ``tf_*`` ports; default ``pad_symmetric``, PyTorch's ``kernel // 2``).

``Architecture.from_string(a.to_string()) == a`` and ``Architecture.from_json(a.to_json()) == a`` for
every valid architecture; both parsers reject anything they do not understand with a
:class:`NasError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nas.errors import NasError, check_choice, check_int, check_number, check_probability

BLOCKS = ("mbconv", "fused")
KERNELS = (3, 5, 7)  # 7: MnasNet-D1 / D1-320
STRIDES = (1, 2)
SKIPS = ("id", "none", "pool")
ACTIVATIONS = ("silu", "relu", "relu6")  # relu6: MobileNetV2 and EfficientNet-Lite
PADDINGS = ("symmetric", "same")
MAX_EXPANSION = 9  # MnasNet-D1's e9, the largest published
MAX_BN_EPS = 0.1
DEFAULT_BN_EPS, DEFAULT_BN_MOMENTUM, DEFAULT_PADDING = 1e-3, 0.1, "symmetric"
MAX_REPEATS = 64
MAX_CHANNELS = 16384
MIN_RESOLUTION, MAX_RESOLUTION = 8, 2048
JSON_FORMAT = "nas.architecture/1"


def _check_str(what: str, text: Any) -> None:
    """Text forms are parsed from text only: another type is named, not taken for an empty string."""
    if not isinstance(text, str):
        raise NasError(f"{what} must be a str, got {type(text).__name__} {text!r}")


@dataclass(frozen=True)
class Stage:
    """One stage: ``repeats`` blocks of one kind; only the first block strides."""

    block: str
    kernel: int
    stride: int
    expansion: int
    out: int
    repeats: int
    se: float = 0.0
    skip: str = "id"
    # TF's nominal input channels of the first block (``fc``): the expanded and SE widths are computed
    # from it instead of the real input. None: the real input. Architecture normalises it away where
    # it equals the real input or changes nothing.
    nominal_in: int | None = None

    def __post_init__(self) -> None:
        check_choice("block kind", self.block, BLOCKS)
        check_choice("kernel", self.kernel, KERNELS)
        check_choice("stride", self.stride, STRIDES)
        check_int("expansion", self.expansion, 1, MAX_EXPANSION)
        check_int("output channels", self.out, 1, MAX_CHANNELS)
        check_int("repeats", self.repeats, 1, MAX_REPEATS)
        object.__setattr__(self, "se", check_probability("SE ratio", self.se))
        check_choice("skip", self.skip, SKIPS)
        if self.nominal_in is not None:
            check_int("nominal input channels (fc token)", self.nominal_in, 1, MAX_CHANNELS)

    @property
    def uses_input_width(self) -> bool:
        """Whether the first block's widths depend on its input channels (expansion or SE), so that
        a nominal input changes the network."""
        return self.expansion != 1 or self.se > 0

    def to_string(self, in_channels: int) -> str:
        s = f"r{self.repeats}_k{self.kernel}_s{self.stride}_e{self.expansion}_i{in_channels}_o{self.out}"
        if self.se:
            s += f"_se{self.se!r}"
        if self.nominal_in is not None:
            s += f"_fc{self.nominal_in}"
        if self.block == "fused":
            s += "_c1"
        if self.skip == "none":
            s += "_noskip"
        elif self.skip == "pool":
            s += "_poolskip"
        return s

    @staticmethod
    def parse(text: str) -> tuple[Stage, int | None]:
        """Parse one stage string; returns the stage and its ``i`` value (None when absent)."""
        _check_str("a stage string", text)
        fields: dict[str, Any] = {}
        in_channels = None
        seen: set[str] = set()
        for tok in text.split("_"):
            m = re.fullmatch(r"(r|k|s|e|i|o|se|fc|c)(\d+(?:\.\d+)?(?:e-?\d+)?)", tok)
            # noskip and poolskip both set the skip op: together they conflict, like a repeated token.
            key = m.group(1) if m else ("skip" if tok in ("noskip", "poolskip") else tok)
            if key in seen:
                raise NasError(f"duplicate token {tok!r} in stage {text!r}")
            seen.add(key)
            if tok in ("noskip", "poolskip"):
                fields["skip"] = "none" if tok == "noskip" else "pool"
                continue
            if m is None:
                raise NasError(f"unknown token {tok!r} in stage {text!r}")
            raw = m.group(2)
            if key == "se":
                fields["se"] = float(raw)
                continue
            if not raw.isdigit():
                raise NasError(f"token {tok!r} in stage {text!r} needs an integer")
            if key == "s":
                if len(raw) == 2 and raw[0] == raw[1]:
                    raw = raw[0]  # V1 / MnasNet write strides as two equal digits: s22, s11
                elif len(raw) != 1:
                    raise NasError(f"stride {tok!r} in stage {text!r}: write s1, s2, s11 or s22")
            val = int(raw)
            if key == "c":
                check_choice("conv type (c token)", val, (0, 1))
                fields["block"] = "fused" if val == 1 else "mbconv"
            elif key == "i":
                in_channels = val
            else:
                fields[
                    {"r": "repeats", "k": "kernel", "s": "stride", "e": "expansion", "o": "out", "fc": "nominal_in"}[
                        key
                    ]
                ] = val
        missing = [
            t
            for t, f in (("r", "repeats"), ("k", "kernel"), ("s", "stride"), ("e", "expansion"), ("o", "out"))
            if f not in fields
        ]
        if missing:
            raise NasError(f"stage {text!r} is missing token(s) {', '.join(missing)}")
        fields.setdefault("block", "mbconv")
        return Stage(**fields), in_channels


def _normalise_nominal(stages: Iterable[Stage], stem: int) -> Iterable[Stage]:
    """Drop each stage's nominal input where it equals the real input or changes no width."""
    prev = stem
    for s in stages:
        if s.nominal_in is not None and (s.nominal_in == prev or not s.uses_input_width):
            s = dataclasses.replace(s, nominal_in=None)
        yield s
        prev = s.out


_NET_TOKENS = {
    "stem": (r"stem(\d+)", int),
    "head": (r"head(\d+)", int),
    "resolution": (r"res(\d+)", int),
    "dropout": (r"drop(\d+(?:\.\d+)?(?:e-?\d+)?)", float),
    "drop_path": (r"sd(\d+(?:\.\d+)?(?:e-?\d+)?)", float),
    "activation": (r"act_([a-z0-9]+)", str),
    "bn_eps": (r"bneps(\d+(?:\.\d+)?(?:e-?\d+)?)", float),
    "bn_momentum": (r"bnmom(\d+(?:\.\d+)?(?:e-?\d+)?)", float),
    "padding": (r"pad_([a-z]+)", str),
}


@dataclass(frozen=True)
class Architecture:
    """A whole network: stem, stages, head, and the regularisation and resolution it is meant for.

    All channel counts are concrete (already rounded); scaling returns a new Architecture
    (see :mod:`search_spaces.scaling`), it never mutates one.
    """

    stem: int
    stages: tuple[Stage, ...]
    head: int = 1280
    resolution: int = 224
    dropout: float = 0.2
    drop_path: float = 0.2
    activation: str = "silu"
    bn_eps: float = DEFAULT_BN_EPS
    bn_momentum: float = DEFAULT_BN_MOMENTUM
    padding: str = DEFAULT_PADDING

    def __post_init__(self) -> None:
        check_int("stem channels", self.stem, 1, MAX_CHANNELS)
        check_int("head channels", self.head, 1, MAX_CHANNELS)
        check_int("resolution", self.resolution, MIN_RESOLUTION, MAX_RESOLUTION)
        object.__setattr__(self, "dropout", check_probability("dropout", self.dropout))
        object.__setattr__(self, "drop_path", check_probability("stochastic depth rate", self.drop_path))
        check_choice("activation", self.activation, ACTIVATIONS)
        object.__setattr__(self, "bn_eps", check_number("BatchNorm epsilon", self.bn_eps, 0, MAX_BN_EPS, lo_open=True))
        object.__setattr__(
            self, "bn_momentum", check_number("BatchNorm momentum", self.bn_momentum, 0, 1, lo_open=True)
        )
        check_choice("padding", self.padding, PADDINGS)
        stages = tuple(self.stages)
        if not stages:
            raise NasError("an architecture needs at least one stage")
        for s in stages:
            if not isinstance(s, Stage):
                raise NasError(f"stages must be Stage objects, got {type(s).__name__}")
        object.__setattr__(self, "stages", tuple(_normalise_nominal(stages, self.stem)))

    # -- derived facts -------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return sum(s.repeats for s in self.stages)

    def stage_inputs(self) -> list[int]:
        """Input channels of each stage (the stem, then each previous stage's output)."""
        ins, prev = [], self.stem
        for s in self.stages:
            ins.append(prev)
            prev = s.out
        return ins

    def replace(self, **changes: Any) -> Architecture:
        return dataclasses.replace(self, **changes)

    # -- text form -------------------------------------------------------------------------
    def to_string(self) -> str:
        parts = [f"stem{self.stem}"]
        parts += [s.to_string(i) for s, i in zip(self.stages, self.stage_inputs())]
        parts += [
            f"head{self.head}",
            f"res{self.resolution}",
            f"drop{self.dropout!r}",
            f"sd{self.drop_path!r}",
            f"act_{self.activation}",
        ]
        # Only where they differ from the default, so that existing architectures keep their text.
        if self.bn_eps != DEFAULT_BN_EPS:
            parts.append(f"bneps{self.bn_eps!r}")
        if self.bn_momentum != DEFAULT_BN_MOMENTUM:
            parts.append(f"bnmom{self.bn_momentum!r}")
        if self.padding != DEFAULT_PADDING:
            parts.append(f"pad_{self.padding}")
        return ",".join(parts)

    def __str__(self) -> str:
        return self.to_string()

    @classmethod
    def from_string(cls, text: str) -> Architecture:
        _check_str("an architecture string", text)
        if not text.strip():
            raise NasError(f"empty architecture string: {text!r}")
        net: dict[str, Any] = {}
        parsed: list[tuple[Stage, int | None, str]] = []
        for tok in (t.strip() for t in text.strip().split(",")):
            if not tok:
                raise NasError(f"empty token (doubled comma?) in architecture string {text!r}")
            if re.match(r"r\d", tok):
                stage, i = Stage.parse(tok)
                parsed.append((stage, i, tok))
                continue
            for field, (pattern, conv) in _NET_TOKENS.items():
                m = re.fullmatch(pattern, tok)
                if m:
                    if field in net:
                        raise NasError(f"duplicate token {tok!r} in architecture string")
                    net[field] = conv(m.group(1))
                    break
            else:
                raise NasError(
                    f"unknown token {tok!r}: expected a stage like r2_k3_s2_e6_i16_o24 or one of "
                    f"stem<C>, head<C>, res<N>, drop<p>, sd<p>, act_<{'|'.join(ACTIVATIONS)}>, bneps<x>, "
                    f"bnmom<x>, pad_<{'|'.join(PADDINGS)}>"
                )
        if not parsed:
            raise NasError(f"architecture string {text!r} has no stage (r<repeats>_k.._s.._e.._o..)")
        if "stem" not in net:
            first_in = parsed[0][1]
            if first_in is None:
                raise NasError("give the stem width (stem<C>) or the first stage's input channels (i<C>)")
            net["stem"] = first_in
        stages, prev = [], net["stem"]
        for stage, i, tok in parsed:
            if i is not None and i != prev:
                # A nominal i (not the real input): the TF decoders' convention. Architecture keeps
                # it as fc where it changes the network and drops it where it does not.
                if stage.nominal_in is not None and stage.nominal_in != i:
                    raise NasError(
                        f"stage {tok!r} has the nominal input channels twice, i{i} and "
                        f"fc{stage.nominal_in} (its real input has {prev})"
                    )
                stage = dataclasses.replace(stage, nominal_in=i)
            stages.append(stage)
            prev = stage.out
        return cls(stages=tuple(stages), **net)

    # -- JSON form -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) for s in self.stages]
        return {"format": JSON_FORMAT, **d}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> Architecture:
        if not isinstance(data, dict):
            raise NasError(f"architecture JSON must be an object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", JSON_FORMAT)
        if fmt != JSON_FORMAT:
            raise NasError(f"unknown architecture format {fmt!r} (expected {JSON_FORMAT!r})")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise NasError(
                f"unknown architecture field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(fields))}"
            )
        if "stem" not in data or "stages" not in data:
            raise NasError("architecture JSON needs 'stem' and 'stages'")
        stages_raw = data.pop("stages")
        if not isinstance(stages_raw, list):
            raise NasError("'stages' must be a list")
        stage_fields = {f.name for f in dataclasses.fields(Stage)}
        stages = []
        for k, s in enumerate(stages_raw):
            if not isinstance(s, dict):
                raise NasError(f"stage {k} must be an object, got {s!r}")
            bad = sorted(set(s) - stage_fields)
            if bad:
                raise NasError(f"stage {k}: unknown field(s) {', '.join(map(repr, bad))}")
            try:
                stages.append(Stage(**s))
            except TypeError as e:  # a missing required field
                raise NasError(f"stage {k}: {e}") from None
        return cls(stages=tuple(stages), **data)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise NasError(f"not valid architecture JSON: {e}") from None
        return cls.from_dict(data)
