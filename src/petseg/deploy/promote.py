"""`petseg promote`: the registry gate as a command (a side effect in the registry, so deliberately no DVC stage)."""

from __future__ import annotations

import os
import sys

from petseg.deploy.registry import CHAMPION, promote, registered_name
from petseg.errors import PetsegError
from petseg.tracking import tracking_uri

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a server that is down answers in seconds


def promote_command(model: str, max_species_drop: float) -> int:
    """0 when the newest version is (now) the champion, 1 when the gate kept it a challenger; MLflow unreachable is
    one warning and 0, since nothing was decided and nothing else must fail."""
    import mlflow

    uri = tracking_uri()
    try:
        decision = promote(mlflow.MlflowClient(tracking_uri=uri), model, max_species_drop)
    except LookupError as err:
        raise PetsegError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - MLflow's client raises many kinds for an unreachable store
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        print(f"petseg: warning: MLflow registry at {uri} unreachable ({reason}); nothing promoted", file=sys.stderr)
        return 0
    name = registered_name(model)
    if decision.alias == CHAMPION:
        print(f"promote: {name} version {decision.version} is {CHAMPION} ({decision.reason})")
        return 0
    print(f"promote: {name} version {decision.version} stays challenger: {decision.reason}")
    return 1
