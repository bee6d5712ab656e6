"""KYC, foreach: verify every user listed for possible fraud, in parallel.

goflow's "Foreach Branching" example with stand-in node functions
(deterministic, no network): get-users lists the users, the foreach vertex
"for-each-user-verify" runs the KYC image validation dag (a subdag) and then
mark-profile once per user. The result is ``{user id: profile}``. Try it::

    aioflow dev examples/kyc_foreach.py:app
    curl -H 'content-type: application/json' \
        -d '{"users": ["alice", "blank-bob", "impostor-carol"]}' \
        'localhost:8080/flow/kyc-foreach?wait=5'

A user id containing "blank" has no face in the image; one containing
"impostor" does not match the face on record. Run it from any directory: the
command puts ``examples/`` on the import path, which finds ``kyc_subdag``.
"""

from typing import Any

# the validation dag of the subdag example, reused as it is: what Dag is for
from kyc_subdag import kyc_image_validation_dag

import aioflow


async def get_listed_users(request: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"id": user, "image": f"https://kyc.example/images/{user}.jpg?signature=stub"}
        for user in request["users"]
    ]


def each_user(users: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """The foreach split: ``{user id: what one iteration receives}``."""
    return {u["id"]: {"user": u["id"], "url": u["image"]} for u in users}


async def mark_profile_based_on_status(result: dict[str, Any], ctx: aioflow.Context) -> Any:
    verified = result["status"] == "success"
    ctx.log.info("user %s: %s", result["user"], result["status"])
    return {"user": result["user"], "kyc": "verified" if verified else "rejected"}


flow = aioflow.Flow("kyc-foreach")
flow.node("get-users", get_listed_users)
verify = flow.foreach("for-each-user-verify", each_user, after="get-users")
verify.subdag("verify-image", kyc_image_validation_dag())
verify.node("mark-profile", mark_profile_based_on_status, after="verify-image")

app = aioflow.App(flows=[flow])
