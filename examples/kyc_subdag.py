"""KYC, subdag: the image validation steps live in a reusable :class:`aioflow.Dag`
that the flow embeds as the vertex "verify-image".

goflow's "Subdag" example with stand-in node functions (deterministic, no
network). Try it::

    aioflow dev examples/kyc_subdag.py:app
    curl -H 'content-type: application/json' -d '{"user": "alice"}' \
        'localhost:8080/flow/kyc-subdag?wait=5'

A user id containing "blank" has no face in the image; one containing
"impostor" does not match the face on record.
"""

from typing import Any

import aioflow


async def s3_doc_exists(image: dict[str, Any]) -> dict[str, Any]:
    if not image["url"].startswith("https://"):
        raise ValueError(f"no such document: {image['url']}")
    return image


async def detect_face(image: dict[str, Any]) -> dict[str, Any]:
    return {"user": image["user"], "faces": 0 if "blank" in image["user"] else 1}


async def match_face(image: dict[str, Any]) -> dict[str, Any]:
    return {"user": image["user"], "score": 0.12 if "impostor" in image["user"] else 0.97}


def validate_results(responses: dict[str, Any]) -> dict[str, Any]:
    detected, matched = responses["face-detect"], responses["face-match"]
    ok = detected["faces"] == 1 and matched["score"] >= 0.8
    return {"user": detected["user"], "status": "success" if ok else "failure"}


async def generate_result(result: dict[str, Any]) -> dict[str, Any]:
    return result


def kyc_image_validation_dag() -> aioflow.Dag:
    """verify-url -> (face-detect, face-match) -> generate-result."""
    dag = aioflow.Dag()
    dag.node("verify-url", s3_doc_exists)
    dag.node("face-detect", detect_face, after="verify-url")
    dag.node("face-match", match_face, after="verify-url")
    dag.node(
        "generate-result",
        generate_result,
        after=["face-detect", "face-match"],
        aggregate=validate_results,
    )
    return dag


async def get_presigned_url_for_image(request: dict[str, Any]) -> dict[str, Any]:
    user = request["user"]
    return {"user": user, "url": f"https://kyc.example/images/{user}.jpg?signature=stub"}


async def mark_profile_based_on_status(result: dict[str, Any]) -> dict[str, Any]:
    verified = result["status"] == "success"
    return {"user": result["user"], "kyc": "verified" if verified else "rejected"}


flow = aioflow.Flow("kyc-subdag")
flow.node("get-image", get_presigned_url_for_image)
flow.subdag("verify-image", kyc_image_validation_dag(), after="get-image")
flow.node("mark-profile", mark_profile_based_on_status, after="verify-image")

app = aioflow.App(flows=[flow])
