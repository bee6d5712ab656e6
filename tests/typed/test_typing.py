"""Static types of typed flows, checked by ``mypy --strict`` (``make lint`` runs it on
tests/): decorated node functions keep their signatures, and ``result_type=`` types
the result. The test functions also run, so the asserts hold at run time too."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, assert_type

import aioflow

from .models import Item, Order
from .test_conversion import ORDER

flow = aioflow.Flow("typing")


@flow.node
def parse(o: Order) -> list[Item]:
    return o.items


@flow.node(after=parse, retries=2)
async def count(items: list[Item], ctx: aioflow.Context) -> int:
    return len(items)


def test_decorated_nodes_keep_their_signatures() -> None:
    sync: Callable[[Order], list[Item]] = parse  # mypy: the decorator kept the signature
    coro: Callable[[list[Item], aioflow.Context], Coroutine[Any, Any, int]] = count
    assert_type(parse(Order.model_validate(ORDER)), list[Item])
    assert sync is parse and coro is count


def test_a_named_node_keeps_its_function_type() -> None:
    def double(x: int) -> int:
        return x * 2

    same = aioflow.Flow("typing-named").node("double", double)
    assert_type(same(2), int)
    assert same is double


async def typed_results(client: aioflow.Client) -> None:
    """Never awaited: mypy checks what the calls return."""
    assert_type(await client.execute(flow, {}, result_type=Order), Order)
    assert_type(await client.execute(flow, {}, result_type=list[Item]), list[Item])
    assert_type(await client.execute(flow, {}), Any)
    assert_type(await client.result("r", result_type=int), int)
    assert_type(await client.result("r", 1.0, flow=flow), Any)


def test_results_are_typed() -> None:
    assert typed_results.__name__
