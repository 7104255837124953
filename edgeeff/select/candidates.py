"""The models `edgeeff select` chooses between: variant × input resolution, with their counts.

No torch at import time: counting builds the network on the meta device, inside the function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeeff.models.variants import Variant, custom_variant, get_variant

DEFAULT_MODELS = tuple(f"b{i}" for i in range(8))
NATIVE = "native"
MIN_RESOLUTION = 32


@dataclass
class MeasuredPoint:
    """A candidate's measured latency: the metrics in ms, where the number came from, and the artifact.

    `source` is "measured" for a profile run by this selection and "stored" for one reused from
    the results database.
    """

    median_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    source: str
    artifact: str | None = None
    sha256: str | None = None
    created_at: str | None = None

    def metric(self, name: str) -> float | None:
        return getattr(self, f"{name}_ms")

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms, "source": self.source,
                "artifact": self.artifact, "sha256": self.sha256, "created_at": self.created_at}


@dataclass
class Candidate:
    """One model the selection may pick, plus what the selection learned about it.

    `predicted_ms` is the final fit's prediction (a leave-one-out prediction for measured
    points), and `predicted_before_ms` the prediction made just before the point was measured.
    """

    variant: Variant
    resolution: int
    params: int
    macs: int
    checkpoint: str | None = None
    group: str = NATIVE  # the --resolutions item that produced this candidate: native, 192 px or 0.75x
    accuracy: float | None = None
    accuracy_source: str | None = None
    measured: MeasuredPoint | None = None
    predicted_ms: float | None = None
    predicted_before_ms: float | None = None
    on_frontier: bool = False

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def label(self) -> str:
        return f"{self.variant.name}@{self.resolution}"

    @property
    def native(self) -> bool:
        return self.resolution == native_resolution(self.variant)

    def latency(self, metric: str) -> float | None:
        """Return the measured metric, else the predicted latency, else None."""
        if self.measured is not None:
            return self.measured.metric(metric)
        return self.predicted_ms

    def to_dict(self, metric: str, budget_ms: float) -> dict:
        latency = self.latency(metric)
        return {
            "name": self.name, "label": self.label, "family": self.variant.family, "phi": self.variant.phi,
            "released": self.variant.released, "resolution": self.resolution, "native_resolution": self.native,
            "resolution_group": self.group, "params": self.params, "macs": self.macs, "checkpoint": self.checkpoint,
            "accuracy": self.accuracy, "accuracy_source": self.accuracy_source,
            "latency_ms": latency, "latency_source": self.measured.source if self.measured else "predicted",
            "within_budget": None if latency is None else latency <= budget_ms,
            "predicted_ms": self.predicted_ms, "predicted_before_ms": self.predicted_before_ms,
            "prediction_error": self.prediction_error(metric),
            "prediction_error_before": self.prediction_error_before(metric), "on_frontier": self.on_frontier,
            "measurement": self.measured.to_dict() if self.measured else None,
        }

    def prediction_error(self, metric: str) -> float | None:
        """Return (predicted − measured) / measured of the final fit's leave-one-out prediction."""
        return self._relative_error(self.predicted_ms, metric)

    def prediction_error_before(self, metric: str) -> float | None:
        """Return (predicted − measured) / measured of the prediction made before measuring."""
        return self._relative_error(self.predicted_before_ms, metric)

    def _relative_error(self, prediction: float | None, metric: str) -> float | None:
        if self.measured is None or prediction is None:
            return None
        value = self.measured.metric(metric)
        return None if not value else (prediction - value) / value


def native_resolution(variant: Variant) -> int:
    """Return the resolution a variant was designed for (candidates keep the registry's variant)."""
    return variant.resolution


def parse_models(text: str | None) -> list[Variant]:
    """Parse a comma list of released variant names (b0…b7, lite0…lite4); default B0–B7."""
    names = [part.strip() for part in (text or ",".join(DEFAULT_MODELS)).split(",") if part.strip()]
    if not names:
        raise ValueError(f"no model in --models {text!r}: write a comma list such as b0,b1,b2")
    variants = [get_variant(name) for name in names]
    return list({variant.name: variant for variant in variants}.values())


def phi_variants(phis: list[float], lite: bool = False) -> list[Variant]:
    """Build the custom variant of each φ; φ must be >= 0."""
    if not phis:
        raise ValueError("no φ value in --phi: write START:STOP:STEP such as 0:3:0.5, or a comma list")
    return [custom_variant(phi, lite=lite) for phi in dict.fromkeys(phis)]


def parse_resolutions(text: str | None) -> list[str | int | float]:
    """Parse --resolutions: a comma list of `native`, sizes in px (192) and scales of native (0.75x).

    Returns the items as `native`, int px or float scale; the default is [native].
    """
    if not text:
        return [NATIVE]
    items: list[str | int | float] = []
    for raw in text.split(","):
        part = raw.strip().lower()
        if not part:
            continue
        if part == NATIVE:
            items.append(NATIVE)
        elif part.endswith("x"):
            try:
                scale = float(part[:-1])
            except ValueError:
                raise ValueError(f"invalid resolution scale {raw.strip()!r} in --resolutions: write a factor "
                                 "such as 0.75x") from None
            if not 0 < scale <= 1:
                raise ValueError(f"invalid resolution scale {raw.strip()!r} in --resolutions: use a factor in "
                                 "(0, 1], such as 0.5x; larger inputs than the native size are not candidates")
            items.append(scale)
        else:
            try:
                size = int(part)
            except ValueError:
                raise ValueError(f"invalid resolution {raw.strip()!r} in --resolutions: write native, a size in px "
                                 "such as 192, or a scale such as 0.75x") from None
            if size < MIN_RESOLUTION or size % 2:
                raise ValueError(f"invalid resolution {size} in --resolutions: use an even size of at least "
                                 f"{MIN_RESOLUTION} px")
            items.append(size)
    if not items:
        raise ValueError(f"no resolution in --resolutions {text!r}: write native, 192 or 0.75x, comma-separated")
    return list(dict.fromkeys(items))


def scaled_resolution(native: int, scale: float) -> int:
    """Scale a native resolution and round to the nearest even size of at least 32 px."""
    return max(MIN_RESOLUTION, int(round(native * scale / 2)) * 2)


def resolution_group(item: str | int | float) -> str:
    """Name a --resolutions item for tables and plot legends: native, 192 px or 0.75x."""
    if item == NATIVE:
        return NATIVE
    return f"{item:g}x" if isinstance(item, float) else f"{item} px"


def resolutions_for(variant: Variant, items: list[str | int | float]) -> dict[int, str]:
    """Map each input size to try for one variant to its --resolutions group, first item first.

    Sizes above the variant's native resolution are left out.
    """
    native = native_resolution(variant)
    sizes: dict[int, str] = {}
    for item in items:
        if item == NATIVE:
            size = native
        elif isinstance(item, float):
            size = scaled_resolution(native, item)
        elif item <= native:
            size = item
        else:
            continue
        sizes.setdefault(size, resolution_group(item))
    return sizes


@dataclass
class CountCache:
    """Parameter and MAC counts per (variant, resolution, classes), computed once per process."""

    counts: dict = field(default_factory=dict)

    def get(self, variant: Variant, resolution: int, num_classes: int) -> tuple[int, int]:
        key = (variant.name, variant.width, variant.depth, resolution, num_classes)
        if key not in self.counts:
            self.counts[key] = _count(variant, resolution, num_classes)
        return self.counts[key]


def _count(variant: Variant, resolution: int, num_classes: int) -> tuple[int, int]:
    import torch

    from edgeeff.models import arch_config
    from edgeeff.models.counting import count_macs, count_params
    from edgeeff.models.efficientnet import EfficientNet

    # The meta device allocates no weights, so B7 costs nothing to count.
    with torch.device("meta"):
        model = EfficientNet(arch_config(variant, num_classes))
    return count_params(model), count_macs(model, resolution)


COUNTS = CountCache()


def build_candidates(variants: list[Variant], resolutions: list[str | int | float], num_classes: int = 1000,
                     checkpoints: dict[str, str] | None = None) -> list[Candidate]:
    """Make one candidate per variant and resolution, with params and MACs, ordered by MACs.

    `checkpoints` maps a variant name to its trained weights; other variants are untrained.
    """
    checkpoints = checkpoints or {}
    candidates = []
    for variant in variants:
        sizes = resolutions_for(variant, resolutions)
        if not sizes:
            continue
        for size, group in sorted(sizes.items()):
            params, macs = COUNTS.get(variant, size, num_classes)
            candidates.append(Candidate(variant=variant, resolution=size, params=params, macs=macs,
                                        checkpoint=checkpoints.get(variant.name), group=group))
    if not candidates:
        listed = ", ".join(f"{v.name} ({native_resolution(v)} px)" for v in variants)
        raise ValueError(f"no candidate: every size in --resolutions is above the native resolution of {listed}; "
                         "pass smaller sizes, native, or a scale such as 0.75x")
    return sorted(candidates, key=lambda c: (c.macs, c.variant.phi, c.resolution))
