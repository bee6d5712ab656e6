"""KYC, conditional branch: face-match runs only when face-detect passes.

goflow's "Conditional Branching" example (one condition, "pass") with stand-in
node functions (deterministic, no network): the validation dag holds a branch
vertex "handle-face-detect-response" whose "pass" branch runs face-match; when
no condition is chosen the branch yields ``{}`` and generate-result goes on.
Try it::

    aioflow dev examples/kyc_conditional.py:app
    curl -H 'content-type: application/json' -d '{"user": "alice"}' \
        'localhost:8080/flow/kyc-conditional?wait=5'

A user id containing "blank" has no face in the image (face-match is skipped);
one containing "impostor" does not match the face on record.
"""

from typing import Any

import aioflow


async def s3_doc_exists(image: dict[str, Any]) -> dict[str, Any]:
    if not image["url"].startswith("https://"):
        raise ValueError(f"no such document: {image['url']}")
    return image


async def detect_face(image: dict[str, Any]) -> dict[str, Any]:
    return {"user": image["user"], "faces": 0 if "blank" in image["user"] else 1}


def face_detect_passed(detection: dict[str, Any]) -> list[str]:
    """The condition: run the "pass" branch only when exactly one face was found."""
    return ["pass"] if detection["faces"] == 1 else []


async def match_face(detection: dict[str, Any]) -> dict[str, Any]:
    return {"user": detection["user"], "score": 0.12 if "impostor" in detection["user"] else 0.97}


async def generate_result(responses: dict[str, Any]) -> dict[str, Any]:
    """``{"face-detect": ..., "handle-face-detect-response": {"pass": ...} or {}}``."""
    detected = responses["face-detect"]
    matched = responses["handle-face-detect-response"].get("pass")
    ok = matched is not None and matched["score"] >= 0.8
    return {
        "user": detected["user"],
        "status": "success" if ok else "failure",
        "face-matched": matched is not None,
    }


def kyc_image_validation_dag() -> aioflow.Dag:
    dag = aioflow.Dag()
    dag.node("verify-url", s3_doc_exists)
    dag.node("face-detect", detect_face, after="verify-url")
    # face-match happens only when face-detect is a success
    branches = dag.branch(
        "handle-face-detect-response",
        face_detect_passed,
        conditions=["pass"],
        after="face-detect",
    )
    branches["pass"].node("face-match", match_face)
    dag.node(
        "generate-result", generate_result, after=["face-detect", "handle-face-detect-response"]
    )
    return dag


async def get_presigned_url_for_image(request: dict[str, Any]) -> dict[str, Any]:
    user = request["user"]
    return {"user": user, "url": f"https://kyc.example/images/{user}.jpg?signature=stub"}


async def mark_profile_based_on_status(result: dict[str, Any]) -> dict[str, Any]:
    verified = result["status"] == "success"
    return {"user": result["user"], "kyc": "verified" if verified else "rejected"}


flow = aioflow.Flow("kyc-conditional")
flow.node("get-image", get_presigned_url_for_image)
flow.subdag("verify-image", kyc_image_validation_dag(), after="get-image")
flow.node("mark-profile", mark_profile_based_on_status, after="verify-image")

app = aioflow.App(flows=[flow])
