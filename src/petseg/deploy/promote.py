"""`petseg promote`: the registry gate as a command (a side effect in the registry, so deliberately no DVC stage)."""

from __future__ import annotations

import os
import sys

from petseg.deploy.gate import CHAMPION, GateError, promote, registered_name
from petseg.errors import PetsegError, first_line
from petseg.tracking import tracking_uri

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a server that is down answers in seconds


def promote_command(model: str, max_species_drop: float) -> int:
    """0 when the newest version is (now) the champion, 1 when the gate kept it a challenger or the registry holds
    something it cannot judge; an unreachable registry is one warning and 0, since nothing was decided."""
    import mlflow

    uri = tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        client.search_registered_models(max_results=1)
    except Exception as err:  # noqa: BLE001 - MLflow's client raises many kinds for an unreachable store
        print(
            f"petseg: warning: MLflow registry at {uri} unreachable ({first_line(err)}); nothing promoted",
            file=sys.stderr,
        )
        return 0
    name = registered_name(model)
    try:
        decision = promote(client, model, max_species_drop)
    except LookupError as err:
        raise PetsegError(str(err)) from None
    except GateError as err:
        print(f"petseg: error: {name} {err}; nothing promoted", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - reachable, yet the registry call failed: say what, and fail
        print(f"petseg: error: {name}: the registry failed ({first_line(err)}); nothing promoted", file=sys.stderr)
        return 1
    if decision.alias == CHAMPION:
        print(f"promote: {name} version {decision.version} is {CHAMPION} ({decision.reason})")
        return 0
    print(f"promote: {name} version {decision.version} stays challenger: {decision.reason}")
    return 1
