"""KYC, sequential: fetch the user's KYC image, detect a face, mark the profile.

The three-step flow of goflow's "Multi Nodes" example, with stand-in node
functions (deterministic, no network). Try it::

    aioflow dev examples/kyc_sequential.py:app
    curl -H 'content-type: application/json' -d '{"user": "alice"}' \
        'localhost:8080/flow/kyc-sequential?wait=5'

A user whose id contains "blank" has an image without a face and is rejected.
"""

from typing import Any

import aioflow

flow = aioflow.Flow("kyc-sequential")


async def get_presigned_url_for_image(request: dict[str, Any]) -> dict[str, Any]:
    user = request["user"]
    return {"user": user, "url": f"https://kyc.example/images/{user}.jpg?signature=stub"}


async def detect_face(image: dict[str, Any]) -> dict[str, Any]:
    faces = 0 if "blank" in image["user"] else 1
    return {"user": image["user"], "faces": faces}


def mark_profile_based_on_status(detection: dict[str, Any]) -> dict[str, Any]:
    # a plain def: aioflow runs it in a thread
    verified = detection["faces"] == 1
    return {"user": detection["user"], "kyc": "verified" if verified else "rejected"}


flow.node("get-kyc-image", get_presigned_url_for_image)
flow.node("face-detect", detect_face, after="get-kyc-image")
flow.node("mark-profile", mark_profile_based_on_status, after="face-detect")

app = aioflow.App(flows=[flow])
