"""KYC with a human in the loop: a flow that waits on the world.

A score decides; an uncertain one waits for a reviewer's decision (the event
``kyc.reviewed`` for this user), up to three days, holding no worker slot. An
approved user waits a cool-off (a durable sleep), then the document check runs as
a child flow (``kyc-verify``) and its result decides. Try it::

    aioflow dev examples/kyc_review.py:app
    curl -H 'content-type: application/json' -d '{"user_id": "user-42", "score": 0.5}' \\
        'localhost:8080/flow/kyc-review'
    # the run waits at manual-review; the reviewer's tool sends:
    curl -H 'content-type: application/json' \\
        -d '{"key": "user-42", "data": {"approved": true}, "id": "rev-981"}' \\
        'localhost:8080/events/kyc.reviewed'

or from Python: ``await client.send_event("kyc.reviewed", {"approved": True},
key="user-42", event_id="rev-981")``. A clear score (>= 0.9 or < 0.2) needs no
reviewer: the decision is taken at once. ``COOL_OFF`` is the seconds of the
cool-off (default 1; a real one would be an hour).
"""

import os
from typing import Any

import aioflow

# -- the child flow: check the user's document ----------------------------------------

verify = aioflow.Flow("kyc-verify")


@verify.node
async def check_document(review: dict[str, Any]) -> dict[str, Any]:
    # a stand-in for a document service: a review marked "forged" fails the check
    return {"document": "rejected" if review.get("forged") else "valid"}


# -- the flow that waits --------------------------------------------------------------

kyc = aioflow.Flow("kyc-review")


@kyc.node
async def score(request: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": request["user_id"], "score": float(request.get("score", 0.5))}


def needs_review(scored: dict[str, Any]) -> str:
    if scored["score"] >= 0.9:
        return "approve"
    if scored["score"] < 0.2:
        return "reject"
    return "review"


paths = kyc.branch("route", needs_review, conditions=["approve", "reject", "review"], after=score)


@paths["approve"].node
async def auto_approve(scored: dict[str, Any]) -> dict[str, Any]:
    return {"approved": True, "by": "score"}


@paths["reject"].node
async def auto_reject(scored: dict[str, Any]) -> dict[str, Any]:
    return {"approved": False, "by": "score"}


# the reviewer's decision: the event's data ({"approved": bool, ...}); after three
# days without one the user is rejected (default=) instead of the run failing
paths["review"].wait(
    "manual-review",
    event="kyc.reviewed",
    key=lambda scored: scored["user_id"],
    timeout=3 * 86400,
    default={"approved": False, "by": "timeout"},
)


@kyc.node(after="route")
async def decision(routes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = routes.values()  # exactly one route was taken
    return only


kyc.sleep("cool-off", seconds=float(os.environ.get("COOL_OFF", "1")), after=decision)
kyc.call("verify", verify, after="cool-off")


@kyc.node(after=[score, decision, "verify"])
async def mark_profile(parts: dict[str, Any]) -> dict[str, Any]:
    approved = parts["decision"]["approved"] and parts["verify"]["document"] == "valid"
    return {"user_id": parts["score"]["user_id"], "kyc": "verified" if approved else "rejected"}


app = aioflow.App(flows=[kyc, verify])
