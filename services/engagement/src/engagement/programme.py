"""The membership programme a retailer configures: ranks and their thresholds, the
rolling window, how long points stay valid, the birthday multiplier.

``CRM_MEMBERSHIP_PROGRAMME`` names a JSON file (docs/engagement.md has an example);
without it the built-in programme applies (Regular / Silver / Gold / Platinum). The file
is checked as a whole at start-up and a bad one stops the process with the field and
the reason, instead of ranking members by half a configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from engagement.domain.membership import Programme, Rank


class InvalidProgramme(ValueError):
    pass


class RankConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    #: Reached with this spend (yen) over the window...
    min_spend: int = Field(ge=0, le=10**12)
    #: ...or this many purchase days over the window (0: by spend only).
    min_visits: int = Field(default=0, ge=0, le=366 * 3)
    points_per_100: float = Field(ge=0, le=100)
    discount_rate: float = Field(default=0.0, ge=0, le=0.9)


class ProgrammeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ranks: tuple[RankConfig, ...] = Field(min_length=1, max_length=16)
    window_days: int = Field(default=365, ge=1, le=3 * 366)
    points_valid_months: int = Field(default=12, ge=1, le=120)
    birthday_multiplier: float = Field(default=2.0, ge=1, le=10)

    @model_validator(mode="after")
    def _ladder(self) -> ProgrammeConfig:
        entry = self.ranks[0]
        if entry.min_spend or entry.min_visits:
            raise ValueError("the first rank is the entry rank: min_spend and min_visits must be 0")
        names = [r.name for r in self.ranks]
        if len(set(names)) != len(names):
            raise ValueError("rank names must be unique")
        for lower, higher in zip(self.ranks, self.ranks[1:], strict=False):
            if higher.min_spend <= lower.min_spend:
                raise ValueError(f"rank {higher.name!r} must need more spend than {lower.name!r}")
            if lower.min_visits and higher.min_visits and higher.min_visits <= lower.min_visits:
                raise ValueError(f"rank {higher.name!r} must need more visits than {lower.name!r}")
        return self

    def programme(self) -> Programme:
        return Programme(
            ranks=tuple(
                Rank(r.name, r.min_spend, r.min_visits, r.points_per_100, r.discount_rate) for r in self.ranks
            ),
            window_days=self.window_days,
            points_valid_months=self.points_valid_months,
            birthday_multiplier=self.birthday_multiplier,
        )


def load_programme(path: Path | None) -> Programme:
    """The programme of ``path`` (JSON), or the built-in one when None."""
    if path is None:
        return Programme()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidProgramme(f"membership programme {path}: {exc.strerror or exc}") from None
    try:
        return ProgrammeConfig.model_validate_json(raw).programme()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<file>'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidProgramme(f"membership programme {path}: {problems}") from None


__all__ = ["InvalidProgramme", "ProgrammeConfig", "RankConfig", "load_programme"]
