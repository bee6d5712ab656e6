"""KYC, branching: face-detect and face-match run in parallel; an aggregator
merges their answers before mark-profile.

goflow's "Branching" example with stand-in node functions (deterministic, no
network). Try it::

    aioflow dev examples/kyc_branching.py:app
    curl -H 'content-type: application/json' -d '{"user": "alice"}' \
        'localhost:8080/flow/kyc-branching?wait=5'

A user id containing "blank" has no face in the image; one containing
"impostor" does not match the face on record.
"""

from typing import Any

import aioflow

flow = aioflow.Flow("kyc-branching")


async def get_presigned_url_for_image(request: dict[str, Any]) -> dict[str, Any]:
    user = request["user"]
    return {"user": user, "url": f"https://kyc.example/images/{user}.jpg?signature=stub"}


async def detect_face(image: dict[str, Any]) -> dict[str, Any]:
    return {"user": image["user"], "faces": 0 if "blank" in image["user"] else 1}


async def match_face(image: dict[str, Any]) -> dict[str, Any]:
    return {"user": image["user"], "score": 0.12 if "impostor" in image["user"] else 0.97}


def validate_results(responses: dict[str, Any]) -> dict[str, Any]:
    """The aggregator: ``{"face-detect": ..., "face-match": ...}`` -> one status."""
    detected, matched = responses["face-detect"], responses["face-match"]
    ok = detected["faces"] == 1 and matched["score"] >= 0.8
    return {"user": detected["user"], "status": "success" if ok else "failure"}


async def mark_profile_based_on_status(result: dict[str, Any]) -> dict[str, Any]:
    verified = result["status"] == "success"
    return {"user": result["user"], "kyc": "verified" if verified else "rejected"}


flow.node("get-kyc-image", get_presigned_url_for_image)
flow.node("face-detect", detect_face, after="get-kyc-image")
flow.node("face-match", match_face, after="get-kyc-image")
# mark-profile depends on face-detect and face-match; the aggregator unifies them
flow.node(
    "mark-profile",
    mark_profile_based_on_status,
    after=["face-detect", "face-match"],
    aggregate=validate_results,
)

app = aioflow.App(flows=[flow])
