"""The first flow: greet, then shout. Run it with `make run`."""

import aioflow

hello = aioflow.Flow("hello")


@hello.node
async def greet(data: dict[str, str]) -> str:
    return f"hello, {data.get('name', 'world')}"


@hello.node(after=greet)
async def shout(text: str) -> dict[str, str]:
    return {"message": text.upper() + "!"}


app = aioflow.App(flows=[hello])
