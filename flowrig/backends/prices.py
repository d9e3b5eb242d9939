"""Prices of what runs use: a table shipped with flowrig, and a project's own over it.

The shipped table (``flowrig/backends/price_tables/aws.toml``) is dated and names where each
figure was read; a figure it could not confirm is left out, and a role it cannot price
is reported as "no price" rather than a guess. ``[run] prices = "prices.toml"`` names a
file of the same form in the project directory, merged key by key over the shipped
table: a region or instance type of the project's own, or a figure that changed.

The form::

    date = "2026-12-07"          # when the figures were read
    currency = "USD"
    source = "..."

    [fargate.us-east-1]          # per region
    vcpu_hour = 0.04048          # Linux/X86, per vCPU-hour
    gb_hour = 0.004445           # per GB of memory and hour
    arm_vcpu_hour = 0.03238      # Linux/ARM
    arm_gb_hour = 0.00356
    spot_factor = 0.3            # Fargate Spot price / on-demand price

    [ec2.us-east-1]
    spot_factor = 0.35
    types = { "m7i.large" = 0.1008 }   # on-demand, per instance-hour

Price keys (:attr:`flowrig.backends.usage.Placement.price_key`):
``fargate:REGION:X86_64``, ``fargate:REGION:ARM64``, ``ec2:REGION:TYPE``.
"""

from __future__ import annotations

import functools
import tomllib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from flowrig.errors import BadInput

if TYPE_CHECKING:
    from flowrig.backends.placement import Placement

#: The shipped table, in this package.
SHIPPED = "aws.toml"
#: The longest price file read: a table of prices is a few KB.
MAX_BYTES = 256 * 1024

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FargateRates(_Strict):
    """One region's Fargate prices, per hour."""

    vcpu_hour: float | None = Field(None, gt=0, allow_inf_nan=False, description="Linux/X86, per vCPU-hour")
    gb_hour: float | None = Field(None, gt=0, allow_inf_nan=False, description="Linux/X86, per GB-hour")
    arm_vcpu_hour: float | None = Field(None, gt=0, allow_inf_nan=False, description="Linux/ARM, per vCPU-hour")
    arm_gb_hour: float | None = Field(None, gt=0, allow_inf_nan=False, description="Linux/ARM, per GB-hour")
    spot_factor: float | None = Field(None, gt=0, le=1, allow_inf_nan=False,
                                      description="Fargate Spot's price as a share of on-demand")
    source: StrictStr | None = Field(None, description="where the figures were read")


class Ec2Rates(_Strict):
    """One region's EC2 prices."""

    types: dict[StrictStr, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="on-demand price per instance-hour"
    )
    spot_factor: float | None = Field(None, gt=0, le=1, allow_inf_nan=False,
                                      description="Spot's price as a share of on-demand")
    source: StrictStr | None = Field(None, description="where the figures were read")


class PriceTable(_Strict):
    """A whole price table (the shipped one, or a project's merged over it)."""

    date: StrictStr | None = Field(None, description="when the figures were read")
    currency: StrictStr = Field("USD", description="currency of every figure")
    source: StrictStr | None = Field(None, description="where the figures were read")
    fargate: dict[StrictStr, FargateRates] = Field(default_factory=dict)
    ec2: dict[StrictStr, Ec2Rates] = Field(default_factory=dict)
    #: How reports name the table (not read from the file).
    label: str = Field("", exclude=True)

    def cost(self, placement: "Placement", seconds: float) -> tuple[float | None, str]:
        """The price of ``seconds`` on ``placement``; ``(None, why)`` when this table
        has none."""
        from flowrig.backends.placement import LOCAL, SPOT

        if placement.market == LOCAL:
            return None, LOCAL
        kind, _, rest = placement.price_key.partition(":")
        region, _, what = rest.partition(":")
        missing = (None, f"no price for {placement.price_key or 'this shape'} in {self.label}")
        hourly, spot = self._hourly(kind, region, what, placement)
        if hourly is None:
            return missing
        if placement.market == SPOT:
            if spot is None:
                return None, f"no Spot price for {placement.price_key} in {self.label}"
            hourly *= spot
        return hourly * seconds / 3600, ""

    def _hourly(self, kind: str, region: str, what: str, placement: "Placement") -> tuple[float | None, float | None]:
        if kind == "fargate" and region in self.fargate:
            rates = self.fargate[region]
            arm = what.upper() == "ARM64"
            vcpu, gb = (rates.arm_vcpu_hour, rates.arm_gb_hour) if arm else (rates.vcpu_hour, rates.gb_hour)
            if vcpu is None or gb is None:
                return None, None
            return placement.vcpu * vcpu + placement.memory_gib * gb, rates.spot_factor
        if kind == "ec2" and region in self.ec2:
            ec2 = self.ec2[region]
            return ec2.types.get(what), ec2.spot_factor
        return None, None


def _validate(data: Mapping[str, Any], where: str) -> PriceTable:
    try:
        return PriceTable.model_validate(dict(data))
    except ValidationError as exc:
        raise BadInput(describe_price_error(exc, where)) from None


def describe_price_error(exc: ValidationError, where: str) -> str:
    """The first problem of a price file as one line naming its dotted key. A value is
    never echoed: a file named by mistake must not show its contents."""
    error = exc.errors(include_url=False)[0]
    key = ".".join(str(part) for part in error["loc"]) or "(the file)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return (f"{where}: unknown key '{key}'; a price file has date, currency, source, "
                "[fargate.REGION] and [ec2.REGION] tables")
    if kind in ("greater_than", "less_than_equal", "finite_number"):
        bound = "a share between 0 and 1" if key.endswith("spot_factor") else "a price greater than 0"
        return f"{where}: '{key}' must be {bound}"
    what = {"float_type": "a number", "string_type": "a string", "dict_type": "a table",
            "model_type": "a table"}.get(kind, "of another type")
    return f"{where}: '{key}' must be {what} (got {type(error.get('input')).__name__})"


@functools.cache
def shipped_table() -> PriceTable:
    """The table shipped with flowrig (read once)."""
    text = resources.files(__package__).joinpath("price_tables", SHIPPED).read_text(encoding="utf-8")
    table = _validate(tomllib.loads(text), f"flowrig's {SHIPPED}")
    return table.model_copy(update={"label": f"aws prices of {table.date}"})


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` table by table (a table of ``over`` is merged into
    the same table of ``base``; any other value replaces it)."""
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def load_prices(root: Path, name: str | None) -> PriceTable:
    """The run's price table: ``name`` (``[run] prices``, relative to the project
    directory ``root``) merged over the shipped one; the shipped one when ``None``.

    Raises
    ------
    BadInput
        A file outside the project directory, not found, too large, not TOML, or with a
        key or figure that is wrong: one line naming it.
    """
    shipped = shipped_table()
    if name is None:
        return shipped
    where = f"[run] prices {name!r}"
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BadInput(f"{where}: the price file must be inside the project directory")
    if not path.is_file():
        raise BadInput(f"{where}: no such file in the project directory")
    if path.stat().st_size > MAX_BYTES:
        raise BadInput(f"{where}: larger than {MAX_BYTES // 1024} KB; a price table is a few KB")
    try:
        own = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{where}: not valid TOML ({exc})") from None
    _validate(own, where)  # the project's own keys named as it wrote them
    base = shipped.model_dump(exclude={"label"}, exclude_none=True)
    table = _validate(merged(base, own), where)
    return table.model_copy(update={"label": f"{name} over {shipped.label}"})
