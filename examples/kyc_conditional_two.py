"""KYC, two conditional branches: face-match when face-detect passes,
create-user when it fails.

goflow's second "Conditional Branching" example (conditions "pass" and
"fail") with stand-in node functions (deterministic, no network). Try it::

    aioflow dev examples/kyc_conditional_two.py:app
    curl -H 'content-type: application/json' -d '{"user": "alice"}' \
        'localhost:8080/flow/kyc-conditional-two?wait=5'

A user id containing "blank" has no face in the image and takes the "fail"
branch; one containing "impostor" does not match the face on record.
"""

from typing import Any

import aioflow


async def s3_doc_exists(image: dict[str, Any]) -> dict[str, Any]:
    if not image["url"].startswith("https://"):
        raise ValueError(f"no such document: {image['url']}")
    return image


async def detect_face(image: dict[str, Any]) -> dict[str, Any]:
    return {"user": image["user"], "faces": 0 if "blank" in image["user"] else 1}


async def face_detect_outcome(detection: dict[str, Any]) -> list[str]:
    return ["pass"] if detection["faces"] == 1 else ["fail"]


async def match_face(detection: dict[str, Any]) -> dict[str, Any]:
    return {"user": detection["user"], "score": 0.12 if "impostor" in detection["user"] else 0.97}


async def create_user(detection: dict[str, Any]) -> dict[str, Any]:
    return {"user": detection["user"], "created": True, "review": "manual"}


async def generate_result(outcome: dict[str, Any]) -> dict[str, Any]:
    """``{"pass": <face-match>}`` or ``{"fail": <create-user>}``."""
    if "pass" in outcome:
        matched = outcome["pass"]
        ok = matched["score"] >= 0.8
        return {"user": matched["user"], "status": "success" if ok else "failure"}
    created = outcome["fail"]
    return {"user": created["user"], "status": "review", "review": created["review"]}


def kyc_image_validation_dag() -> aioflow.Dag:
    dag = aioflow.Dag()
    dag.node("verify-url", s3_doc_exists)
    dag.node("face-detect", detect_face, after="verify-url")
    # face-match when face-detect is a success, otherwise create-user
    branches = dag.branch(
        "handle-face-detect-response",
        face_detect_outcome,
        conditions=["pass", "fail"],
        after="face-detect",
    )
    branches["pass"].node("face-match", match_face)
    branches["fail"].node("create-user", create_user)
    dag.node("generate-result", generate_result, after="handle-face-detect-response")
    return dag


async def get_presigned_url_for_image(request: dict[str, Any]) -> dict[str, Any]:
    user = request["user"]
    return {"user": user, "url": f"https://kyc.example/images/{user}.jpg?signature=stub"}


async def mark_profile_based_on_status(result: dict[str, Any]) -> dict[str, Any]:
    kyc = {"success": "verified", "failure": "rejected"}.get(result["status"], "pending-review")
    return {"user": result["user"], "kyc": kyc}


flow = aioflow.Flow("kyc-conditional-two")
flow.node("get-image", get_presigned_url_for_image)
flow.subdag("verify-image", kyc_image_validation_dag(), after="get-image")
flow.node("mark-profile", mark_profile_based_on_status, after="verify-image")

app = aioflow.App(flows=[flow])
