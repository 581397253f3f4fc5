"""The reference service's licence table: which site may process which radiopharmaceuticals on
which scanner models and reconstructions, and with which algorithm.

JSON file format (``petray reference-server --licenses FILE``)::

    {"sites": {
        "petray-site": {
            "active": true,
            "radiopharmaceuticals": ["FDG", "PSMA-11"],
            "algorithms": [
                {"model": "Biograph*", "reconstruction": "*", "algorithm": "petdenoise-siemens"},
                {"model": "*", "reconstruction": "*", "algorithm": "petdenoise-generic"}
            ]
        },
        "*": {...}            # optional: applies to any site not listed
    }}

Model and reconstruction are case-insensitive shell patterns; radiopharmaceutical names are
compared ignoring case, spaces, hyphens and underscores ("PSMA-11" == "psma 11"), or ``"*"``.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from petray.errors import ConfigurationError

ANY = "*"
_NAME_NOISE = re.compile(r"[\s\-_]+")

# Canonical names of the common PET tracers; the permissive default licence accepts all of them
# so that petray's synthetic series (and the demo) pass check_model.
COMMON_RADIOPHARMACEUTICALS: tuple[str, ...] = (
    "FDG",
    "PSMA-11",
    "PSMA-1007",
    "DCFPyL",
    "rhPSMA-7.3",
    "DOTATATE",
    "DOTATOC",
    "DOTANOC",
    "FLT",
    "FES",
    "NaF",
    "Choline",
    "Fluorocholine",
    "FDOPA",
    "Florbetapir",
    "Florbetaben",
    "Flutemetamol",
    "PiB",
    "Rb-82",
    "N-13 Ammonia",
    "O-15 Water",
    "FAPI",
    "FET",
    "FMISO",
    "Fluciclovine",
    "Flortaucipir",
    "Methionine",
)


def normalise_name(name: str) -> str:
    return _NAME_NOISE.sub("", name).casefold()


class AlgorithmRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = ANY
    reconstruction: str = ANY
    algorithm: str = Field(min_length=1)

    def matches(self, model: str, reconstruction: str) -> bool:
        return fnmatchcase(model.casefold(), self.model.casefold()) and fnmatchcase(
            reconstruction.casefold(), self.reconstruction.casefold()
        )


class SiteLicence(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    active: bool = True
    radiopharmaceuticals: tuple[str, ...] = COMMON_RADIOPHARMACEUTICALS
    algorithms: tuple[AlgorithmRule, ...] = (AlgorithmRule(algorithm="petray-reference-generic"),)

    def allows_radiopharmaceutical(self, name: str) -> bool:
        wanted = normalise_name(name)
        return any(r == ANY or normalise_name(r) == wanted for r in self.radiopharmaceuticals)

    def algorithm_for(self, model: str, reconstruction: str) -> str | None:
        for rule in self.algorithms:
            if rule.matches(model, reconstruction):
                return rule.algorithm
        return None


class LicenceTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sites: dict[str, SiteLicence] = Field(default_factory=dict)

    @classmethod
    def permissive(cls) -> LicenceTable:
        """Any site, any scanner and reconstruction, the common tracers."""
        return cls(sites={ANY: SiteLicence()})

    @classmethod
    def from_json(cls, data: Any) -> LicenceTable:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(f"invalid licence table: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> LicenceTable:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read licence table {path}: {exc}") from None
        return cls.from_json(data)

    def site(self, client_id: str) -> SiteLicence | None:
        return self.sites.get(client_id, self.sites.get(ANY))
