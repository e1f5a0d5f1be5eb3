#!/usr/bin/env python3
"""Admission order under overload when the slot is kept until the app answers (issue 20).

A discrete-event simulation of the queue-proxy's breaker: CC slots, a queue of 10 x CC, Poisson
arrivals, an app whose service time is exponential around a mean and which finishes every
request it was given (it ignores cancellation), clients that give up after a fixed timeout.
A request counts as served when its response is complete before its client's deadline.

Orders compared when a slot frees:
  fifo  - the oldest waiter (what the breaker does);
  lifo  - the newest waiter (the one with the most time left when every client has the same
          timeout: the server does not know the clients' deadlines);
Waiters whose client has gone are never admitted (they left the queue), in both orders.

Usage: sim.py [seconds=600] [seed=1]; prints one line per setting.
"""
import heapq
import random
import sys


def run(order, cc, rate, mean_service, timeout, seconds, seed):
    rng = random.Random(seed)
    queue_cap = 10 * cc
    t = 0.0
    events = []  # (time, kind, id)
    arrivals = {}
    waiting = []  # ids in arrival order
    busy = 0
    served = shed = gave_up = late = 0
    next_id = 0
    heapq.heappush(events, (rng.expovariate(rate), "arrive", -1))
    while events:
        t, kind, rid = heapq.heappop(events)
        if t > seconds:
            break
        if kind == "arrive":
            heapq.heappush(events, (t + rng.expovariate(rate), "arrive", -1))
            rid = next_id
            next_id += 1
            arrivals[rid] = t
            if busy < cc:
                busy += 1
                heapq.heappush(events, (t + rng.expovariate(1 / mean_service), "done", rid))
            elif len(waiting) < queue_cap:
                waiting.append(rid)
                heapq.heappush(events, (t + timeout, "expire", rid))
            else:
                shed += 1
        elif kind == "expire":
            if rid in arrivals and rid in waiting:
                waiting.remove(rid)
                gave_up += 1
        elif kind == "done":
            if t - arrivals[rid] <= timeout:
                served += 1
            else:
                late += 1
            busy -= 1
            if waiting:
                nxt = waiting.pop(0) if order == "fifo" else waiting.pop()
                busy += 1
                heapq.heappush(events, (t + rng.expovariate(1 / mean_service), "done", nxt))
    total = next_id
    return served, late, gave_up, shed, total


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 600
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    print("cc rate/s service_s timeout_s | order served late gave_up shed total | served %")
    for cc, rate, service, timeout in [
        (2, 200, 0.5, 1.0),  # the issue's #13583 shape: 50x overload
        (2, 6, 0.5, 1.0),  # 1.5x overload
        (2, 4.4, 0.5, 1.0),  # 1.1x overload
        (10, 25, 0.3, 2.0),
    ]:
        for order in ("fifo", "lifo"):
            s, l, g, sh, tot = run(order, cc, rate, service, timeout, seconds, seed)
            print(f"{cc} {rate} {service} {timeout} | {order} {s} {l} {g} {sh} {tot} | {100 * s / tot:.1f}")


if __name__ == "__main__":
    main()
