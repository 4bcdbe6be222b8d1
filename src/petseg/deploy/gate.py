"""The promotion gate: `petseg promote` moves the alias `champion` of `petseg-<model>` to the newest version only if
its test scores are complete and finite, on the same test split as the champion's, no worse overall, and no species
drops by more than `promote.max_species_drop`. Imports neither torch nor the model code: moving an alias is cheap."""

from __future__ import annotations

import math
from dataclasses import dataclass

CHAMPION, CHALLENGER = "champion", "challenger"
OVERALL, SPLIT = "test_dice_per_image", "test_split_hash"
SPECIES_PREFIX = OVERALL + "."


class GateError(Exception):
    """The registry holds something the gate cannot judge (missing or non-finite scores): one line, exit 1."""


def registered_name(model: str) -> str:
    return f"petseg-{model}"


@dataclass(frozen=True)
class Scores:
    version: str
    overall: float
    species: dict[str, float]
    split: str


def scores_of(version) -> Scores:
    """A version's gate scores from its tags; anything missing, non-numeric or non-finite is a GateError."""
    tags, where = dict(version.tags), f"version {version.version}"
    if OVERALL not in tags:
        raise GateError(
            f"{where} has no {OVERALL} tag (its evaluate run did not finish registering it); "
            "rerun `dvc repro evaluate` or delete the version"
        )
    if SPLIT not in tags:
        raise GateError(f"{where} has no {SPLIT} tag; rerun `dvc repro evaluate` or delete the version")

    def number(key: str) -> float:
        try:
            value = float(tags[key])
        except ValueError:
            raise GateError(f"{where}: tag {key} is {tags[key]!r}, not a number") from None
        if not math.isfinite(value):
            raise GateError(f"{where}: tag {key} is {tags[key]!r}; only finite scores can be compared")
        return value

    species = {key[len(SPECIES_PREFIX) :]: number(key) for key in tags if key.startswith(SPECIES_PREFIX)}
    return Scores(str(version.version), number(OVERALL), species, tags[SPLIT])


@dataclass(frozen=True)
class Decision:
    version: str
    alias: str  # what the newest version holds now: champion or challenger
    reason: str


def promote(client, model: str, max_species_drop: float) -> Decision:
    """Gate the newest version of `petseg-<model>` against the champion (or, when the champion's version is gone,
    against the best earlier version); idempotent."""
    name = registered_name(model)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    if not versions:
        raise LookupError(f"{name} has no registered version yet; run `dvc repro` (the evaluate stage registers)")
    newest = scores_of(versions[-1])
    champion = _alias(client, name, CHAMPION)
    if champion is not None and str(champion.version) == newest.version:
        return Decision(newest.version, CHAMPION, "already the champion")
    if champion is not None:
        rival, against = scores_of(champion), f"the champion, version {champion.version}"
    else:  # no alias: the first promotion, or the champion's version was deleted
        earlier = [scores_of(v) for v in versions[:-1]]
        if not earlier:
            client.set_registered_model_alias(name, CHAMPION, newest.version)
            return Decision(newest.version, CHAMPION, "the first version")
        rival = max(earlier, key=lambda s: s.overall)
        against = f"version {rival.version}, the best earlier one (no version holds {CHAMPION})"
    failed = _failed_rule(newest, rival, max_species_drop)
    alias = CHALLENGER if failed else CHAMPION
    client.set_registered_model_alias(name, alias, newest.version)
    return Decision(newest.version, alias, f"{failed} ({against})" if failed else f"passed the gate against {against}")


def _alias(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as err:  # MLflow raises its generic exception for a missing alias
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", "")) or "not found" in str(err).lower():
            return None
        raise


def _failed_rule(new: Scores, old: Scores, max_species_drop: float) -> str:
    """The first rule the new version fails against ``old``, or ''."""
    if new.split != old.split:
        return "its test split differs (scores are not comparable)"
    if new.overall < old.overall:
        return f"test Dice {new.overall:.4f} is below {old.overall:.4f}"
    missing = sorted(old.species.keys() - new.species.keys())
    if missing:
        return f"it has no test score for {', '.join(missing)}"
    for species, theirs in sorted(old.species.items()):
        drop = theirs - new.species[species]
        if drop > max_species_drop:
            return f"{species} test Dice drops by {drop:.4f} (more than promote.max_species_drop {max_species_drop})"
    return ""
