"""SECS-II codec: decode/encode of a typical S6F11 and a 1 MiB recipe body, vs secsgem 0.3 in the same run."""

from __future__ import annotations

import random
import time

import secsgem.secs.functions as sf

from bench.common import emit, progress, standard_args
from equipment.secs import BOOLEAN, F8, U1, U4, A, B, L, decode, encode

BENCH = "secs_codec"


def typical_s6f11(k: int, rng: random.Random) -> L:
    """Return an S6F11 like a process tool sends: 2 reports of 10 values (lot, recipe, parameters)."""
    def values(lot: str) -> L:
        return L(A(lot), A("RCP-ETCH-01"), F8(350 + rng.gauss(0, 1)), F8(13.3 + rng.gauss(0, 0.1)),
                 F8(1200 + rng.gauss(0, 5)), F8(97.5 + rng.gauss(0, 0.5)), U1(k % 2), U4(25),
                 A("productive"), BOOLEAN(True))
    lot = f"LOT-{k // 4:05d}"
    return L(U4(k), U4(3002), L(L(U4(100), values(lot)), L(U4(101), values(lot))))


def _rate(fn, items: list, min_time_s: float) -> float:
    """Return calls per second of fn over `items`, repeated for at least min_time_s (best round)."""
    best = float("inf")
    spent = 0.0
    rounds = 0
    while spent < min_time_s or rounds < 3:
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        dt = time.perf_counter() - t0
        best = min(best, dt / len(items))
        spent += dt
        rounds += 1
    return 1.0 / best


def main(argv: list[str] | None = None) -> int:
    args = standard_args(BENCH, argv)
    quick = args.quick
    rng = random.Random(7)
    n_msgs = 64 if quick else 512
    items = [typical_s6f11(k, rng) for k in range(n_msgs)]
    bodies = [encode(it) for it in items]
    progress(f"S6F11 of {len(bodies[0])} bytes, {n_msgs} distinct messages")

    def sg_decode(body: bytes) -> object:
        f = sf.SecsS06F11()
        f.decode(body)
        return f

    sg_funcs = [sg_decode(b) for b in bodies]
    assert all(decode(b) == it for b, it in zip(bodies, items, strict=True))
    assert [f.encode() for f in sg_funcs] == bodies  # same bytes both ways
    t = 0.3 if quick else 2.0
    ours_dec = _rate(decode, bodies, t)
    sg_dec = _rate(sg_decode, bodies[: max(8, n_msgs // 8)], t / 2)
    emit(BENCH, "s6f11_decode_rate", ours_dec, "msg/s", "secsgem 0.3 SecsS06F11.decode", sg_dec,
         as_json=args.json)
    ours_enc = _rate(encode, items, t)
    sg_enc = _rate(lambda f: f.encode(), sg_funcs[: max(8, n_msgs // 8)], t / 2)
    emit(BENCH, "s6f11_encode_rate", ours_enc, "msg/s", "secsgem 0.3 SecsS06F11.encode", sg_enc,
         as_json=args.json)

    progress("1 MiB recipe body (S7F3: PPID + binary PPBODY)")
    recipe = L(A("RCP-ETCH-01"), B(rng.randbytes(1 << 20)))
    body = encode(recipe)

    def sg_decode7(b: bytes) -> object:
        f = sf.SecsS07F03()
        f.decode(b)
        return f

    sg7 = sg_decode7(body)
    assert sg7.encode() == body and decode(body) == recipe
    ours_dec7 = _rate(decode, [body], 0.3 if quick else 1.0)
    sg_dec7 = _rate(sg_decode7, [body], 0.0)
    emit(BENCH, "recipe_1mib_decode_rate", ours_dec7, "msg/s", "secsgem 0.3 SecsS07F03.decode",
         sg_dec7, as_json=args.json)
    ours_enc7 = _rate(encode, [recipe], 0.3 if quick else 1.0)
    sg_enc7 = _rate(lambda f: f.encode(), [sg7], 0.0)
    emit(BENCH, "recipe_1mib_encode_rate", ours_enc7, "msg/s", "secsgem 0.3 SecsS07F03.encode",
         sg_enc7, as_json=args.json)
    return 0
